//! Case-insensitive access to JSON objects.
//!
//! Upstream flannel decodes every document it reads with Go's `encoding/json`, where object keys
//! match struct fields case-insensitively, unknown keys are ignored and `null` leaves the default
//! in place. This module gives the same reading rules on top of `serde_json::Value`.

use serde_json::{Map, Value};

/// A borrowed JSON object whose keys are looked up ignoring ASCII case.
#[derive(Debug, Clone, Copy)]
pub struct CiObject<'a> {
    map: &'a Map<String, Value>,
}

/// Why a value could not be read: names the key and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: expected {expected}, got {got}")]
pub struct FieldError {
    pub key: String,
    pub expected: &'static str,
    pub got: String,
}

/// The value as JSON text, cut to 60 characters (never inside a character: the text may be
/// anything a writer put in the datastore).
fn describe(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

impl<'a> CiObject<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Self { map }
    }

    /// The value for `key` (exact match preferred, then ASCII case-insensitive), `None` when the
    /// key is absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        let found = self.map.get(key).or_else(|| {
            self.map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        });
        found.filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(self.err(key, "a string", other)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(key, "true or false", other)),
        }
    }

    /// An unsigned integer that fits `max`.
    pub fn uint(&self, key: &str, max: u64) -> Result<Option<u64>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => match n.as_u64() {
                Some(x) if x <= max => Ok(Some(x)),
                _ => Err(self.err(key, "a non-negative integer in range", v)),
            },
            Some(other) => Err(self.err(key, "a number", other)),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<CiObject<'a>>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(CiObject::new(m))),
            Some(other) => Err(self.err(key, "an object", other)),
        }
    }

    fn err(&self, key: &str, expected: &'static str, got: &Value) -> FieldError {
        FieldError {
            key: key.to_string(),
            expected,
            got: describe(got),
        }
    }
}

/// `v` with every object key lower-cased (recursively): two documents that Go's decoder reads
/// the same compare equal after this.
pub fn lowercase_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lowercase_keys(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(lowercase_keys).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_case_insensitively_and_null_is_absent() {
        let v = json!({"network": "10.0.0.0/8", "SUBNETLEN": 24, "Backend": null});
        let o = CiObject::new(v.as_object().unwrap());
        assert_eq!(o.str("Network").unwrap(), Some("10.0.0.0/8"));
        assert_eq!(o.uint("SubnetLen", 32).unwrap(), Some(24));
        assert!(o.get("Backend").is_none());
        assert!(o.get("Missing").is_none());
    }

    #[test]
    fn long_non_ascii_values_are_cut_at_a_character_boundary() {
        // Found by the config fuzz target: "end byte index 60 is not a char boundary".
        let v = json!({"EnableIPv6": "é".repeat(100)});
        let o = CiObject::new(v.as_object().unwrap());
        let e = o.bool("EnableIPv6").unwrap_err().to_string();
        assert!(
            e.starts_with("EnableIPv6: expected true or false, got \"éé"),
            "{e}"
        );
        assert!(e.ends_with("..."), "{e}");
        let short = json!({"A": "é"});
        let o = CiObject::new(short.as_object().unwrap());
        assert!(o.bool("A").unwrap_err().to_string().ends_with("\"é\""));
    }

    #[test]
    fn wrong_types_name_the_key() {
        let v = json!({"SubnetLen": "24", "EnableIPv4": 1});
        let o = CiObject::new(v.as_object().unwrap());
        let e = o.uint("SubnetLen", 32).unwrap_err();
        assert_eq!(e.to_string(), "SubnetLen: expected a number, got \"24\"");
        assert!(o
            .bool("EnableIPv4")
            .unwrap_err()
            .to_string()
            .contains("EnableIPv4"));
    }
}

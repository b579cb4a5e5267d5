//! A JSON value kept exactly as written: other writers' `BackendData` goes back to the
//! datastore (and into comparisons) byte for byte, numbers and all. Through a parsed `Value` a
//! float does not survive: serde_json's default float parsing is not correctly rounded, so
//! `9.9033333333333325e+93` decodes, encodes as `9.903333333333333e+93`, and that decodes to a
//! different number.

use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Our own data, from a value.
    pub fn from_value(v: &Value) -> Self {
        // A `Value` always serializes; the fallback is never taken.
        Self(
            serde_json::value::to_raw_value(v)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default()),
        )
    }

    /// Validated JSON text, kept as it is.
    pub fn from_text(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_string()).map(Self)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed (for a backend that reads it).
    pub fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_spacing_survive() {
        let r = RawJson::from_text(r#"{"X": 9.9033333333333325e+93, "Y":[1, 2]}"#).unwrap();
        assert_eq!(r.get(), r#"{"X": 9.9033333333333325e+93, "Y":[1, 2]}"#);
        assert!(r.value().unwrap()["Y"].is_array());
        assert!(RawJson::from_text("{oops").is_err());
        assert_eq!(
            RawJson::from_value(&serde_json::json!({"VNI":1})).get(),
            r#"{"VNI":1}"#
        );
    }
}

//! The CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`, ...), validated as the reference
//! `skel` library does before a plugin runs.

use crate::error::{code, CniError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

fn valid_container_id(id: &str) -> bool {
    let mut b = id.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .bytes()
            .any(|c| c == b'/' || c == b':' || c.is_ascii_whitespace())
}

impl CniEnv {
    /// Reads and checks the variables the command needs.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let g = |k: &str| get(k).unwrap_or_default();
        let e = Self {
            command: g("CNI_COMMAND"),
            container_id: g("CNI_CONTAINERID"),
            netns: g("CNI_NETNS"),
            ifname: g("CNI_IFNAME"),
            args: g("CNI_ARGS"),
            path: g("CNI_PATH"),
        };
        let needs: &[&str] = match e.command.as_str() {
            "ADD" | "CHECK" => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            "DEL" => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            "GC" => &["CNI_PATH"],
            _ => &[],
        };
        let missing: Vec<&str> = needs.iter().copied().filter(|k| g(k).is_empty()).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if needs.contains(&"CNI_CONTAINERID") {
            if !valid_container_id(&e.container_id) {
                return Err(
                    CniError::new(code::INVALID_ENV, "invalid characters in containerID")
                        .with_details(e.container_id.clone()),
                );
            }
            if !valid_ifname(&e.ifname) {
                return Err(CniError::new(code::INVALID_ENV, "invalid interface name")
                    .with_details(e.ifname.clone()));
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_env(&|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_everything() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required env variables [CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        let ok = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc-1.2_x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn unsafe_ids_and_names_are_refused() {
        let base = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        for bad in ["../etc", "-x", "a/b", "a b"] {
            let mut v = base.to_vec();
            v.push(("CNI_CONTAINERID", bad));
            assert_eq!(
                env(&v).unwrap_err().msg,
                "invalid characters in containerID",
                "{bad}"
            );
        }
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_PATH", "/x"),
        ]);
        assert_eq!(e.unwrap_err().msg, "invalid interface name");
    }
}

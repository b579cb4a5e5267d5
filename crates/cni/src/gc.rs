//! GC (CNI 1.1.0): stored delegate configs of containers that are not among the runtime's valid
//! attachments are replayed as DEL (which frees their host-local addresses) and removed.
//!
//! Only an explicit list decides: without `cni.dev/valid-attachments`, or with something else
//! than an array there, nothing is removed (a runtime bug must not free running pods'
//! addresses); `[]` means every stored attachment is stale.

use crate::attachment;
use crate::env::CniEnv;
use crate::error::{code, CniError};
use crate::netconf::NetConf;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const VALID: &str = "cni.dev/valid-attachments";

/// The container IDs the runtime still uses, from `cni.dev/valid-attachments`; `Ok(None)` with
/// the reason when the key is absent or not an array.
pub fn valid_ids(stdin: &[u8]) -> Result<Result<BTreeSet<String>, String>, CniError> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("failed to load netconf: {e}")))?;
    Ok(match v.get(VALID) {
        None | Some(Value::Null) => Err(format!("the config has no {VALID:?}")),
        Some(Value::Array(a)) => Ok(a
            .iter()
            .filter_map(|a| a["containerID"].as_str().map(String::from))
            .collect()),
        Some(other) => Err(format!(
            "{VALID:?} is not an array ({})",
            match other {
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                _ => "a boolean",
            }
        )),
    })
}

pub fn cmd_gc(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let valid = match valid_ids(stdin)? {
        Ok(v) => v,
        Err(why) => {
            eprintln!("flannel: GC removes nothing: {why}");
            return Ok(Vec::new());
        }
    };
    let dir = Path::new(&conf.data_dir);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::new(
                code::IO_FAILURE,
                format!("reading {}: {e}", dir.display()),
            ))
        }
    };
    let mut failed = Vec::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if valid.contains(&id) || id.starts_with('.') {
            continue;
        }
        // The stale container's interface name is not recorded; pods use eth0.
        let vars = [
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        match attachment::undo(&entry.path(), &env.path, &vars) {
            Ok(()) => eprintln!("flannel: GC removed stale attachment {id}"),
            Err(e) => failed.push(format!("{id}: {}", e.msg)),
        }
    }
    if !failed.is_empty() {
        return Err(CniError::new(
            code::PLUGIN,
            format!("GC could not clean up: {}", failed.join("; ")),
        ));
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_valid_attachments() {
        let ids = valid_ids(br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}"#).unwrap().unwrap();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(valid_ids(br#"{"cni.dev/valid-attachments":[]}"#)
            .unwrap()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn without_a_list_nothing_is_stale() {
        assert!(valid_ids(b"{}").unwrap().unwrap_err().contains("has no"));
        let e = valid_ids(br#"{"cni.dev/valid-attachments":{"containerID":"a"}}"#)
            .unwrap()
            .unwrap_err();
        assert!(e.contains("not an array (an object)"), "{e}");
    }
}

//! GC (CNI 1.1.0): stored delegate configs of containers that are not among the runtime's valid
//! attachments are replayed as DEL (which frees their host-local addresses) and removed.

use crate::env::CniEnv;
use crate::error::{code, CniError};
use crate::invoke;
use crate::netconf::NetConf;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The container IDs the runtime still uses, from `cni.dev/valid-attachments`.
pub fn valid_ids(stdin: &[u8]) -> Result<BTreeSet<String>, CniError> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("failed to load netconf: {e}")))?;
    Ok(v["cni.dev/valid-attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["containerID"].as_str().map(String::from))
        .collect())
}

pub fn cmd_gc(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let valid = valid_ids(stdin)?;
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
        let path = entry.path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let plugin = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["type"].as_str().map(String::from))
            .unwrap_or_else(|| "bridge".into());
        // The stale container's interface name is not recorded; pods use eth0.
        let vars = [
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        match invoke::run_with_env(&env.path, &plugin, "DEL", &bytes, &vars) {
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
                eprintln!("flannel: GC removed stale attachment {id}");
            }
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
        let ids = valid_ids(br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(valid_ids(b"{}").unwrap().is_empty());
    }
}

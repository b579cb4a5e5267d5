//! The plugin's network configuration from stdin (upstream `NetConf`), read with Go's JSON rules.

use crate::error::{code, CniError};
use flannel_core::json_ci::CiObject;
use serde_json::{Map, Value};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
pub const DEFAULT_SUBNET_FILE_WAIT: u64 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet_file: String,
    pub data_dir: String,
    /// How long ADD waits for subnet.env to appear (`subnetFileWait`, seconds; default 10).
    pub subnet_file_wait: std::time::Duration,
    pub delegate: Option<Map<String, Value>>,
    pub ipam: Option<Map<String, Value>>,
    pub runtime_config: Option<Value>,
    /// `prevResult` (CHECK, and ADD inside a chain).
    pub prev_result: Option<Value>,
}

fn bad(msg: String) -> CniError {
    CniError::new(code::DECODE_FAILURE, msg)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(stdin)
            .map_err(|e| bad(format!("failed to load netconf: {e}")))?;
        let m = v
            .as_object()
            .ok_or_else(|| bad("failed to load netconf: not a JSON object".into()))?;
        let o = CiObject::new(m);
        let field =
            |e: flannel_core::json_ci::FieldError| bad(format!("failed to load netconf: {e}"));
        let obj = |k: &str| -> Result<Option<Map<String, Value>>, CniError> {
            Ok(o.object(k).map_err(field)?.map(|_| {
                o.get(k)
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default()
            }))
        };
        Ok(Self {
            cni_version: o
                .str("cniVersion")
                .map_err(field)?
                .unwrap_or("")
                .to_string(),
            name: o.str("name").map_err(field)?.unwrap_or("").to_string(),
            subnet_file: o
                .str("subnetFile")
                .map_err(field)?
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SUBNET_FILE)
                .to_string(),
            subnet_file_wait: std::time::Duration::from_secs(
                o.uint("subnetFileWait", 3600)
                    .map_err(field)?
                    .unwrap_or(DEFAULT_SUBNET_FILE_WAIT),
            ),
            data_dir: o
                .str("dataDir")
                .map_err(field)?
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_DATA_DIR)
                .to_string(),
            delegate: obj("delegate")?,
            ipam: obj("ipam")?,
            runtime_config: o.get("runtimeConfig").cloned(),
            prev_result: o.get("prevResult").cloned(),
        })
    }

    /// Fails with CNI code 1 when the config asks for a spec version we do not speak.
    pub fn check_version(&self) -> Result<(), CniError> {
        if self.cni_version.is_empty()
            || crate::SUPPORTED_VERSIONS.contains(&self.cni_version.as_str())
        {
            return Ok(());
        }
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is {:?}, plugin supports {:?}",
                self.cni_version,
                crate::SUPPORTED_VERSIONS
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_case_insensitive_keys() {
        let c = NetConf::parse(br#"{"name":"cbr0","type":"flannel","CNIVersion":"0.3.1","delegate":{"hairpinMode":true}}"#).unwrap();
        assert_eq!(c.cni_version, "0.3.1");
        assert_eq!(c.subnet_file, DEFAULT_SUBNET_FILE);
        assert_eq!(c.data_dir, DEFAULT_DATA_DIR);
        assert_eq!(c.delegate.unwrap()["hairpinMode"], true);
        let c = NetConf::parse(br#"{"name":"n","subnetFile":"/x/env","dataDir":"/d"}"#).unwrap();
        assert_eq!(
            (c.subnet_file.as_str(), c.data_dir.as_str()),
            ("/x/env", "/d")
        );
    }

    #[test]
    fn malformed_input_is_a_decode_error() {
        let e = NetConf::parse(b"{nope").unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.starts_with("failed to load netconf"));
        assert!(NetConf::parse(br#"{"delegate":"bridge"}"#)
            .unwrap_err()
            .msg
            .contains("delegate"));
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9"}"#)
                .unwrap()
                .check_version()
                .unwrap_err()
                .code,
            1
        );
    }
}

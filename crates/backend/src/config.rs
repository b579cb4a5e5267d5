//! The network config's `Backend` block, typed: read once at start by the chosen backend's own
//! parser, so the daemon never looks at the raw JSON or a type string again.

use crate::udp::config::UdpConfig;
use crate::vxlan::config::VxlanConfig;
use crate::wg::config::WgConfig;
use crate::BackendError;
use flannel_core::NetworkConfig;

/// Backend types this build implements, as `Backend.Type` names them.
pub const SUPPORTED: &[&str] = &["vxlan", "host-gw", "udp", "wireguard"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    /// host-gw has no keys of its own.
    HostGw,
    Udp(UdpConfig),
    Wireguard(WgConfig),
}

impl BackendConfig {
    /// Reads the `Backend` block of `config` for its `Type` (upstream's `udp` when absent). An
    /// unknown type or a bad key is an error naming the type or the key.
    pub fn from_network(config: &NetworkConfig) -> Result<Self, BackendError> {
        let block = &config.backend;
        let bad = |backend: &'static str| {
            move |e: flannel_core::json_ci::FieldError| BackendError::Config {
                backend,
                msg: e.to_string(),
            }
        };
        Ok(match config.backend_type.as_str() {
            "vxlan" => Self::Vxlan(VxlanConfig::from_backend(block).map_err(bad("vxlan"))?),
            "host-gw" => Self::HostGw,
            "udp" => Self::Udp(UdpConfig::from_backend(block).map_err(bad("udp"))?),
            "wireguard" => {
                Self::Wireguard(WgConfig::from_backend(block).map_err(bad("wireguard"))?)
            }
            other => return Err(BackendError::Unsupported(other.to_string())),
        })
    }

    /// The type's name as `Backend.Type` spells it (metrics, the state snapshot, logs).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Vxlan(_) => "vxlan",
            Self::HostGw => "host-gw",
            Self::Udp(_) => "udp",
            Self::Wireguard(_) => "wireguard",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: &str) -> Result<BackendConfig, BackendError> {
        BackendConfig::from_network(&NetworkConfig::parse(doc).unwrap())
    }

    #[test]
    fn each_type_is_read_by_its_own_parser() {
        let vx = parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"VXLAN","VNI":4}}"#).unwrap();
        assert!(matches!(vx, BackendConfig::Vxlan(c) if c.vni == 4));
        let udp = parse(r#"{"Network":"10.0.0.0/8"}"#).unwrap();
        assert_eq!(
            udp,
            BackendConfig::Udp(UdpConfig { port: 8285 }),
            "absent = udp"
        );
        let hg = parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(hg.type_name(), "host-gw");
        let wg = parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"wireguard"}}"#).unwrap();
        assert_eq!(wg.type_name(), "wireguard");
    }

    #[test]
    fn a_bad_key_or_an_unknown_type_is_named() {
        let e = parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","VNI":"x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid vxlan backend config: VNI"), "{e}");
        let e = parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"ipip"}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "backend type \"ipip\" is not supported by this flannel-rs build (supported: vxlan, host-gw, udp, wireguard)"
        );
        let e = parse(r#"{"Network":"10.0.0.0/8","Backend":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backend type \"\" is not supported"), "{e}");
    }
}

//! The `Backend` block of a udp network config (upstream `udp.go`), keys case-insensitive.

use flannel_core::json_ci::{CiObject, FieldError};

/// Upstream's default port for the udp backend.
pub const DEFAULT_PORT: u16 = 8285;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// The UDP port peers send to; 0 or absent = 8285.
    pub port: u16,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self { port: DEFAULT_PORT }
    }
}

impl UdpConfig {
    pub fn from_backend(backend: &serde_json::Value) -> Result<Self, FieldError> {
        let empty = serde_json::Map::new();
        let o = CiObject::new(backend.as_object().unwrap_or(&empty));
        let port = o
            .uint("Port", u64::from(u16::MAX))?
            .map(|p| p as u16)
            .filter(|p| *p > 0)
            .unwrap_or(DEFAULT_PORT);
        Ok(Self { port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_defaults_to_8285_and_zero_means_default() {
        assert_eq!(UdpConfig::from_backend(&json!(null)).unwrap().port, 8285);
        assert_eq!(
            UdpConfig::from_backend(&json!({"Type": "udp"}))
                .unwrap()
                .port,
            8285
        );
        assert_eq!(
            UdpConfig::from_backend(&json!({"port": 0})).unwrap().port,
            8285
        );
        assert_eq!(
            UdpConfig::from_backend(&json!({"PORT": 9000}))
                .unwrap()
                .port,
            9000
        );
    }

    #[test]
    fn a_bad_port_names_the_key() {
        let e = UdpConfig::from_backend(&json!({"Port": 70000})).unwrap_err();
        assert!(e.to_string().starts_with("Port"), "{e}");
        let e = UdpConfig::from_backend(&json!({"Port": "x"})).unwrap_err();
        assert!(e.to_string().starts_with("Port"), "{e}");
    }
}

//! The network configuration (`<prefix>/config` in etcd, or net-conf.json): parsing with upstream's
//! JSON rules and the validation and defaulting of upstream's `CheckNetworkConfig`.

use crate::json_ci::{CiObject, FieldError};
use crate::subnet::{
    block_size, mask, u128_to_v4, u128_to_v6, v4_to_u128, v6_to_u128, SubnetRange,
};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    // Callers name the document and where it lives ("invalid network config at <key>: ...").
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("must be a JSON object")]
    NotAnObject,
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("{key}: invalid {family} CIDR format: {value:?}")]
    InvalidCidr {
        key: &'static str,
        family: &'static str,
        value: String,
    },
    #[error("{key}: invalid {family} address: {value:?}")]
    InvalidIp {
        key: &'static str,
        family: &'static str,
        value: String,
    },
    /// One of upstream's validation messages, verbatim.
    #[error("{0}")]
    Invalid(String),
}

/// The parsed network configuration. After [`NetworkConfig::check`] the subnet length and range
/// of every enabled family are filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_nftables: bool,
    pub network: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub subnet_len: Option<u8>,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    pub ipv6_subnet_len: Option<u8>,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// Lower-cased backend type. Upstream uses `udp` when the `Backend` key is absent.
    pub backend_type: String,
    /// The raw `Backend` object (`Value::Null` when absent), for the backend to read its keys.
    pub backend: Value,
}

/// SubnetLen is a Go `uint`: anything that parses as an unsigned integer is read, then checked.
const UINT_MAX: u64 = u64::MAX;

impl NetworkConfig {
    /// Parses a config document. Keys match case-insensitively; unknown keys are ignored; `null`
    /// keeps the default.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let map = value.as_object().ok_or(ConfigError::NotAnObject)?;
        let o = CiObject::new(map);

        let network = o
            .str("Network")?
            .map(|s| parse_v4_cidr("Network", s))
            .transpose()?;
        let ipv6_network = o
            .str("IPv6Network")?
            .map(|s| parse_v6_cidr("IPv6Network", s))
            .transpose()?;
        let backend = o.get("Backend").cloned().unwrap_or(Value::Null);
        let backend_type = match &backend {
            Value::Null => "udp".to_string(),
            Value::Object(m) => CiObject::new(m)
                .str("Type")
                .map_err(|e| FieldError {
                    key: format!("Backend.{}", e.key),
                    ..e
                })?
                .unwrap_or("")
                .to_ascii_lowercase(),
            other => {
                return Err(FieldError {
                    key: "Backend".into(),
                    expected: "an object",
                    got: other.to_string(),
                }
                .into())
            }
        };
        Ok(Self {
            enable_ipv4: o.bool("EnableIPv4")?.unwrap_or(true),
            enable_ipv6: o.bool("EnableIPv6")?.unwrap_or(false),
            enable_nftables: o.bool("EnableNFTables")?.unwrap_or(false),
            network,
            ipv6_network,
            subnet_len: o.uint("SubnetLen", UINT_MAX)?.map(clamp_len),
            subnet_min: o
                .str("SubnetMin")?
                .map(|s| parse_v4("SubnetMin", s))
                .transpose()?,
            subnet_max: o
                .str("SubnetMax")?
                .map(|s| parse_v4("SubnetMax", s))
                .transpose()?,
            ipv6_subnet_len: o.uint("IPv6SubnetLen", UINT_MAX)?.map(clamp_len),
            ipv6_subnet_min: o
                .str("IPv6SubnetMin")?
                .map(|s| parse_v6("IPv6SubnetMin", s))
                .transpose()?,
            ipv6_subnet_max: o
                .str("IPv6SubnetMax")?
                .map(|s| parse_v6("IPv6SubnetMax", s))
                .transpose()?,
            backend_type,
            backend,
        })
    }

    /// Parses and validates in one step (etcd mode).
    pub fn parse_and_check(text: &str) -> Result<Self, ConfigError> {
        let mut c = Self::parse(text)?;
        c.check()?;
        Ok(c)
    }

    /// Upstream's `CheckNetworkConfig`: validates and fills in SubnetLen/Min/Max defaults for
    /// every enabled family.
    pub fn check(&mut self) -> Result<(), ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::Invalid(
                "neither EnableIPv4 nor EnableIPv6 is set: nothing to do".into(),
            ));
        }
        if self.enable_ipv4 {
            let net = self.network.ok_or_else(|| {
                ConfigError::Invalid(
                    "please define a correct Network parameter in the flannel config".into(),
                )
            })?;
            let r = check_family(
                &V4,
                v4_to_u128(net.network()),
                net.prefix_len(),
                self.subnet_len,
                self.subnet_min.map(v4_to_u128),
                self.subnet_max.map(v4_to_u128),
            )?;
            self.subnet_len = Some(r.subnet_len);
            self.subnet_min = Some(u128_to_v4(r.min));
            self.subnet_max = Some(u128_to_v4(r.max));
        }
        if self.enable_ipv6 {
            let net = self.ipv6_network.ok_or_else(|| {
                ConfigError::Invalid(
                    "please define a correct IPv6Network parameter in the flannel config".into(),
                )
            })?;
            let r = check_family(
                &V6,
                v6_to_u128(net.network()),
                net.prefix_len(),
                self.ipv6_subnet_len,
                self.ipv6_subnet_min.map(v6_to_u128),
                self.ipv6_subnet_max.map(v6_to_u128),
            )?;
            self.ipv6_subnet_len = Some(r.subnet_len);
            self.ipv6_subnet_min = Some(u128_to_v6(r.min));
            self.ipv6_subnet_max = Some(u128_to_v6(r.max));
        }
        Ok(())
    }

    /// The IPv4 allocation range; `None` unless IPv4 is enabled and the config was checked.
    pub fn v4_range(&self) -> Option<SubnetRange> {
        let net = self.network.filter(|_| self.enable_ipv4)?;
        Some(SubnetRange {
            bits: 32,
            network: v4_to_u128(net.network()),
            network_len: net.prefix_len(),
            subnet_len: self.subnet_len?,
            min: v4_to_u128(self.subnet_min?),
            max: v4_to_u128(self.subnet_max?),
        })
    }

    pub fn v6_range(&self) -> Option<SubnetRange> {
        let net = self.ipv6_network.filter(|_| self.enable_ipv6)?;
        Some(SubnetRange {
            bits: 128,
            network: v6_to_u128(net.network()),
            network_len: net.prefix_len(),
            subnet_len: self.ipv6_subnet_len?,
            min: v6_to_u128(self.ipv6_subnet_min?),
            max: v6_to_u128(self.ipv6_subnet_max?),
        })
    }
}

fn clamp_len(v: u64) -> u8 {
    v.min(255) as u8
}

fn parse_v4_cidr(key: &'static str, s: &str) -> Result<Ipv4Net, ConfigError> {
    s.parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|_| ConfigError::InvalidCidr {
            key,
            family: "IPv4",
            value: s.into(),
        })
}

fn parse_v6_cidr(key: &'static str, s: &str) -> Result<Ipv6Net, ConfigError> {
    s.parse::<Ipv6Net>()
        .map(|n| n.trunc())
        .map_err(|_| ConfigError::InvalidCidr {
            key,
            family: "IPv6",
            value: s.into(),
        })
}

fn parse_v4(key: &'static str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse().map_err(|_| ConfigError::InvalidIp {
        key,
        family: "IPv4",
        value: s.into(),
    })
}

fn parse_v6(key: &'static str, s: &str) -> Result<Ipv6Addr, ConfigError> {
    s.parse().map_err(|_| ConfigError::InvalidIp {
        key,
        family: "IPv6",
        value: s.into(),
    })
}

/// The per-family constants of upstream's checks.
struct Family {
    bits: u8,
    max_len: u8,
    min_network_len: u8,
    default_len: u8,
    default_up_to: u8,
    len_key: &'static str,
    min_key: &'static str,
    max_key: &'static str,
    net_key: &'static str,
    fmt: fn(u128) -> String,
}

const V4: Family = Family {
    bits: 32,
    max_len: 30,
    min_network_len: 28,
    default_len: 24,
    default_up_to: 22,
    len_key: "SubnetLen",
    min_key: "SubnetMin",
    max_key: "SubnetMax",
    net_key: "Network",
    fmt: |a| u128_to_v4(a).to_string(),
};

const V6: Family = Family {
    bits: 128,
    max_len: 126,
    min_network_len: 124,
    default_len: 64,
    default_up_to: 62,
    len_key: "IPv6SubnetLen",
    min_key: "IPv6SubnetMin",
    max_key: "IPv6SubnetMax",
    net_key: "IPv6Network",
    fmt: |a| u128_to_v6(a).to_string(),
};

fn check_family(
    f: &Family,
    network: u128,
    network_len: u8,
    subnet_len: Option<u8>,
    min: Option<u128>,
    max: Option<u128>,
) -> Result<SubnetRange, ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let subnet_len = match subnet_len {
        Some(len) if len > f.max_len => {
            return invalid(format!(
                "{} must be less than /{}",
                f.len_key,
                f.max_len + 1
            ))
        }
        Some(len) if u16::from(len) < u16::from(network_len) + 2 => {
            return invalid("network must be able to accommodate at least four subnets".into())
        }
        Some(len) => len,
        None if network_len > f.min_network_len => {
            return invalid(format!(
                "network is too small. Minimum useful network prefix is /{}",
                f.min_network_len
            ))
        }
        None if network_len <= f.default_up_to => f.default_len,
        None => network_len + 2,
    };
    let step = block_size(f.bits, subnet_len);
    let net_size = block_size(f.bits, network_len);
    let in_network = |a: u128| a & mask(f.bits, network_len) == network;
    let min = match min {
        None => network + step,
        Some(m) if !in_network(m) => {
            return invalid(format!(
                "{} is not in the range of the {}",
                f.min_key, f.net_key
            ))
        }
        Some(m) => m,
    };
    let max = match max {
        // network + size - step, computed without overflowing a full /0 IPv6 range.
        None => network + (net_size - step),
        Some(m) if !in_network(m) => {
            return invalid(format!(
                "{} is not in the range of the {}",
                f.max_key, f.net_key
            ))
        }
        Some(m) => m,
    };
    let boundary = step - 1;
    if min & boundary != 0 {
        return invalid(format!(
            "{} is not on a {} boundary: {}",
            f.min_key,
            f.len_key,
            (f.fmt)(min)
        ));
    }
    if max & boundary != 0 {
        return invalid(format!(
            "{} is not on a {} boundary: {}",
            f.max_key,
            f.len_key,
            (f.fmt)(max)
        ));
    }
    if min > max {
        return invalid(format!(
            "{} ({}) is above {} ({}): no subnet can be allocated",
            f.min_key,
            (f.fmt)(min),
            f.max_key,
            (f.fmt)(max)
        ));
    }
    Ok(SubnetRange {
        bits: f.bits,
        network,
        network_len,
        subnet_len,
        min,
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(s: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse_and_check(s)
    }

    fn err(s: &str) -> String {
        checked(s).unwrap_err().to_string()
    }

    #[test]
    fn tutorial_config_defaults() {
        let c = checked(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#).unwrap();
        assert_eq!(c.backend_type, "vxlan");
        assert_eq!(c.subnet_len, Some(24));
        assert_eq!(c.subnet_min, Some(Ipv4Addr::new(10, 244, 1, 0)));
        assert_eq!(c.subnet_max, Some(Ipv4Addr::new(10, 244, 255, 0)));
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
    }

    #[test]
    fn upstream_config_test_v4_and_v6_defaults() {
        let c = checked(r#"{"network":"10.3.0.0/16","enableipv6":true,"ipv6network":"fc00::/48"}"#)
            .unwrap();
        assert_eq!(c.subnet_min, Some(Ipv4Addr::new(10, 3, 1, 0)));
        assert_eq!(c.subnet_max, Some(Ipv4Addr::new(10, 3, 255, 0)));
        assert_eq!(c.ipv6_subnet_len, Some(64));
        assert_eq!(c.ipv6_subnet_min, Some("fc00:0:0:1::".parse().unwrap()));
        assert_eq!(c.ipv6_subnet_max, Some("fc00:0:0:ffff::".parse().unwrap()));
    }

    #[test]
    fn backend_absent_means_udp_and_type_is_lowercased() {
        assert_eq!(
            checked(r#"{"Network":"10.0.0.0/8"}"#).unwrap().backend_type,
            "udp"
        );
        let c = checked(r#"{"Network":"10.0.0.0/8","backend":{"type":"VXLAN","VNI":4}}"#).unwrap();
        assert_eq!(c.backend_type, "vxlan");
        assert_eq!(c.backend["VNI"], 4);
        assert_eq!(
            checked(r#"{"Network":"10.0.0.0/8","Backend":{}}"#)
                .unwrap()
                .backend_type,
            ""
        );
    }

    #[test]
    fn host_bits_cleared_and_explicit_values_kept() {
        let c = checked(
            r#"{"Network":"10.244.3.7/16","SubnetLen":25,"SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.128"}"#,
        )
        .unwrap();
        assert_eq!(c.network.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(c.subnet_len, Some(25));
        let r = c.v4_range().unwrap();
        assert_eq!(r.step(), 128);
        assert_eq!(u128_to_v4(r.max), Ipv4Addr::new(10, 244, 20, 128));
    }

    #[test]
    fn small_networks_derive_len() {
        let c = checked(r#"{"Network":"10.0.0.0/26"}"#).unwrap();
        assert_eq!(c.subnet_len, Some(28));
        assert_eq!(c.subnet_min, Some(Ipv4Addr::new(10, 0, 0, 16)));
        assert_eq!(c.subnet_max, Some(Ipv4Addr::new(10, 0, 0, 48)));
    }

    #[test]
    fn validation_messages_match_upstream() {
        let cases = [
            (
                r#"{}"#,
                "please define a correct Network parameter in the flannel config",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
                "SubnetLen must be less than /31",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
                "network must be able to accommodate at least four subnets",
            ),
            (
                r#"{"Network":"10.0.0.0/29"}"#,
                "network is too small. Minimum useful network prefix is /28",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.5"}"#,
                "SubnetMin is not on a SubnetLen boundary: 10.0.1.5",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.9.1"}"#,
                "SubnetMax is not on a SubnetLen boundary: 10.0.9.1",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
                "SubnetMin is not in the range of the Network",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/64","IPv6SubnetLen":127}"#,
                "IPv6SubnetLen must be less than /127",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
                "please define a correct IPv6Network parameter in the flannel config",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(err(input), want, "input {input}");
        }
    }

    /// One row per config key: read case-insensitively, `null` keeps the default, and a value
    /// of the wrong type is refused with the key named.
    #[test]
    fn every_key_case_insensitive_null_default_and_type_errors() {
        let base_for = |key: &str| {
            [
                ("Network", r#""10.8.0.0/16""#),
                ("IPv6Network", r#""fd00::/48""#),
                ("EnableIPv6", "true"),
            ]
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
        };
        type Get = fn(&NetworkConfig) -> String;
        let rows: [(&str, &str, Get, &str, &str); 12] = [
            (
                "Network",
                r#""10.9.0.0/16""#,
                |c| format!("{:?}", c.network),
                "Some(10.9.0.0/16)",
                "\"10.9.0.0\"",
            ),
            (
                "IPv6Network",
                r#""fd01::/48""#,
                |c| format!("{:?}", c.ipv6_network),
                "Some(fd01::/48)",
                "\"fd01::\"",
            ),
            (
                "EnableIPv4",
                "true",
                |c| c.enable_ipv4.to_string(),
                "true",
                "\"yes\"",
            ),
            (
                "EnableIPv6",
                "true",
                |c| c.enable_ipv6.to_string(),
                "true",
                "1",
            ),
            (
                "EnableNFTables",
                "true",
                |c| c.enable_nftables.to_string(),
                "true",
                "\"true\"",
            ),
            (
                "SubnetLen",
                "25",
                |c| format!("{:?}", c.subnet_len),
                "Some(25)",
                "\"25\"",
            ),
            (
                "SubnetMin",
                r#""10.8.4.0""#,
                |c| format!("{:?}", c.subnet_min),
                "Some(10.8.4.0)",
                "\"10.8.4\"",
            ),
            (
                "SubnetMax",
                r#""10.8.9.0""#,
                |c| format!("{:?}", c.subnet_max),
                "Some(10.8.9.0)",
                "5",
            ),
            (
                "IPv6SubnetLen",
                "60",
                |c| format!("{:?}", c.ipv6_subnet_len),
                "Some(60)",
                "-1",
            ),
            (
                "IPv6SubnetMin",
                r#""fd00:0:0:10::""#,
                |c| format!("{:?}", c.ipv6_subnet_min),
                "Some(fd00:0:0:10::)",
                "\"x\"",
            ),
            (
                "IPv6SubnetMax",
                r#""fd00:0:0:f0::""#,
                |c| format!("{:?}", c.ipv6_subnet_max),
                "Some(fd00:0:0:f0::)",
                "[]",
            ),
            (
                "Backend",
                r#"{"Type":"VXLAN"}"#,
                |c| c.backend_type.clone(),
                "vxlan",
                "\"vxlan\"",
            ),
        ];
        for (key, good, get, want, bad) in rows {
            let base = base_for(key);
            for spelled in [
                key.to_string(),
                key.to_ascii_lowercase(),
                key.to_ascii_uppercase(),
            ] {
                let doc = format!("{{{base},\"{spelled}\":{good}}}");
                let c = checked(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
                assert_eq!(get(&c), want, "{doc}");
            }
            let null = NetworkConfig::parse(&format!("{{{base},\"{key}\":null}}")).unwrap();
            let default = NetworkConfig::parse(&format!("{{{base}}}")).unwrap();
            assert_eq!(get(&null), get(&default), "{key}: null keeps the default");
            let e = err(&format!("{{{base},\"{key}\":{bad}}}"));
            assert!(e.starts_with(&key.to_string()), "{key}={bad}: {e}");
        }
        let unknown = checked(r#"{"Network":"10.8.0.0/16","Whatever":[1,2]}"#).unwrap();
        assert_eq!(
            unknown.network.unwrap().to_string(),
            "10.8.0.0/16",
            "unknown keys are ignored"
        );
    }

    #[test]
    fn parse_errors_name_the_key() {
        assert_eq!(
            err(r#"{"Network":"10.0.0.0"}"#),
            r#"Network: invalid IPv4 CIDR format: "10.0.0.0""#
        );
        assert_eq!(
            err(r#"{"Network":"fc00::/64"}"#),
            r#"Network: invalid IPv4 CIDR format: "fc00::/64""#
        );
        assert_eq!(
            err(r#"{"Network":"10.0.0.0/8","SubnetLen":"24"}"#),
            r#"SubnetLen: expected a number, got "24""#
        );
        assert_eq!(
            err(r#"{"Network":"10.0.0.0/8","Backend":"vxlan"}"#),
            r#"Backend: expected an object, got "vxlan""#
        );
        assert!(err("{not json").starts_with("not valid JSON"));
        assert_eq!(err("[1]"), "must be a JSON object");
    }
}

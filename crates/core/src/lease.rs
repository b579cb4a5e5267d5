//! Lease values: the JSON stored under each subnet key, byte-compatible with upstream's
//! `LeaseAttrs` (field order, `PublicIPv6: null`, omitted empty backend fields), and the typed
//! backend data of the vxlan backend.

use crate::json_ci::{CiObject, FieldError};
use crate::mac::MacAddr;
use crate::raw_json::RawJson;
use crate::subnet_key::SubnetKey;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease value is not valid JSON: {0}")]
    Json(String),
    #[error("lease value must be a JSON object")]
    NotAnObject,
    #[error("lease value: {0}")]
    Field(#[from] FieldError),
    #[error("lease value: {key}: invalid IP address {value:?}")]
    BadIp { key: &'static str, value: String },
    #[error("vxlan backend data: {0}")]
    Vxlan(String),
}

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    /// `0.0.0.0` when the node has no IPv4 public address, as upstream writes it.
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// Empty for backends that publish no type (udp).
    pub backend_type: String,
    /// Kept exactly as the writer wrote it (upstream's `json.RawMessage`).
    pub backend_data: Option<RawJson>,
    pub backend_v6_data: Option<RawJson>,
}

/// A subnet and who holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
}

impl Lease {
    /// An IPv4-only lease.
    pub fn v4(subnet: Ipv4Net, attrs: LeaseAttrs) -> Self {
        Self {
            subnet,
            ipv6_subnet: None,
            attrs,
        }
    }

    // Small and called per lease from the backends' crate: inlined there (no LTO in release).
    #[inline]
    pub fn key(&self) -> SubnetKey {
        SubnetKey::new(self.subnet, self.ipv6_subnet)
    }
}

impl LeaseAttrs {
    /// IPv4-only attributes: what most backends publish.
    pub fn v4(public_ip: Ipv4Addr, backend_type: &str, backend_data: Option<Value>) -> Self {
        Self {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.into(),
            backend_data: backend_data.as_ref().map(RawJson::from_value),
            backend_v6_data: None,
        }
    }

    /// The exact JSON upstream writes:
    /// `{"PublicIP":..,"PublicIPv6":..,"BackendType":..,"BackendData":..,"BackendV6Data":..}`.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(160);
        s.push_str("{\"PublicIP\":");
        s.push_str(&Value::String(self.public_ip.to_string()).to_string());
        s.push_str(",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => s.push_str(&Value::String(ip.to_string()).to_string()),
            None => s.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            s.push_str(",\"BackendType\":");
            s.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        if let Some(d) = &self.backend_data {
            s.push_str(",\"BackendData\":");
            s.push_str(d.get());
        }
        if let Some(d) = &self.backend_v6_data {
            s.push_str(",\"BackendV6Data\":");
            s.push_str(d.get());
        }
        s.push('}');
        s
    }

    /// Reads a lease value with Go's rules: keys case-insensitive, unknown keys ignored, `null`
    /// as absent. The backend data are kept as written.
    pub fn from_json(text: &[u8]) -> Result<Self, LeaseError> {
        let raw: BTreeMap<String, Box<RawValue>> = match serde_json::from_slice(text) {
            Ok(m) => m,
            // Valid JSON that is not an object gets its own message.
            Err(e) => {
                return Err(match serde_json::from_slice::<Value>(text) {
                    Ok(_) => LeaseError::NotAnObject,
                    Err(_) => LeaseError::Json(e.to_string()),
                })
            }
        };
        let is = |k: &str, name: &str| k.eq_ignore_ascii_case(name);
        // The scalar fields through the case-insensitive reader; the backend data raw.
        let mut scalars = Map::new();
        let (mut data, mut v6data) = (None, None);
        for (k, v) in &raw {
            if is(k, "BackendData") {
                pick(&mut data, k, "BackendData", v);
            } else if is(k, "BackendV6Data") {
                pick(&mut v6data, k, "BackendV6Data", v);
            } else if ["PublicIP", "PublicIPv6", "BackendType"]
                .iter()
                .any(|n| is(k, n))
            {
                let v: Value =
                    serde_json::from_str(v.get()).map_err(|e| LeaseError::Json(e.to_string()))?;
                scalars.insert(k.clone(), v);
            }
        }
        let o = CiObject::new(&scalars);
        let public_ip = match o.str("PublicIP")? {
            None => Ipv4Addr::UNSPECIFIED,
            Some(s) => s.parse().map_err(|_| LeaseError::BadIp {
                key: "PublicIP",
                value: s.to_string(),
            })?,
        };
        let public_ipv6 = o
            .str("PublicIPv6")?
            .map(|s| {
                s.parse().map_err(|_| LeaseError::BadIp {
                    key: "PublicIPv6",
                    value: s.to_string(),
                })
            })
            .transpose()?;
        let keep = |d: Option<(bool, &RawValue)>| {
            d.map(|(_, r)| r)
                .filter(|r| r.get().trim() != "null")
                .map(|r| RawJson::from_text(r.get()).map(bounded_backend_data))
                .transpose()
                .map_err(|e| LeaseError::Json(e.to_string()))
        };
        Ok(Self {
            public_ip,
            public_ipv6,
            backend_type: o.str("BackendType")?.unwrap_or("").to_string(),
            backend_data: keep(data)?,
            backend_v6_data: keep(v6data)?,
        })
    }
}

/// Backend data longer than this is kept only for the fields backends read: every backend's
/// own is under 100 bytes, and a writer padding a lease (etcd takes 1.5 MiB, a Node too) must
/// not make every node hold it.
pub const BACKEND_DATA_MAX: usize = 4096;

/// The fields of `BackendData` a backend reads (vxlan: VNI, VtepMAC; wireguard: PublicKey,
/// Port), matched ignoring case as Go's JSON reader does.
const BACKEND_DATA_FIELDS: [&str; 4] = ["VNI", "VtepMAC", "PublicKey", "Port"];

/// `data` as written when it is small; else only its known fields (an empty object when it
/// is not an object at all).
pub fn bounded_backend_data(data: RawJson) -> RawJson {
    if data.get().len() <= BACKEND_DATA_MAX {
        return data;
    }
    let kept: Map<String, Value> = match data.value() {
        Ok(Value::Object(m)) => m
            .into_iter()
            .filter(|(k, v)| {
                BACKEND_DATA_FIELDS
                    .iter()
                    .any(|f| k.eq_ignore_ascii_case(f))
                    && v.to_string().len() <= 256
            })
            .collect(),
        _ => Map::new(),
    };
    RawJson::from_value(&Value::Object(kept))
}

/// Among keys that match a field ignoring case, the same choice as the `json_ci` reader makes
/// for every other field: the exact spelling wins, else the first in key order.
fn pick<'a>(slot: &mut Option<(bool, &'a RawValue)>, key: &str, name: &str, v: &'a RawValue) {
    let exact = key == name;
    match slot {
        Some((true, _)) => {}
        Some((false, _)) if !exact => {}
        _ => *slot = Some((exact, v)),
    }
}

/// The vxlan backend's `BackendData`: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    pub vni: u32,
    pub vtep_mac: MacAddr,
}

impl VxlanData {
    pub fn to_value(&self) -> Value {
        // serde_json's map is sorted, which gives upstream's field order (VNI < VtepMAC).
        serde_json::json!({"VNI": self.vni, "VtepMAC": self.vtep_mac.to_string()})
    }

    /// Reads backend data as a lease carries it.
    pub fn from_raw(r: &RawJson) -> Result<Self, LeaseError> {
        let v = r
            .value()
            .map_err(|e| LeaseError::Vxlan(format!("not JSON: {e}")))?;
        Self::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<Self, LeaseError> {
        let m = v
            .as_object()
            .ok_or_else(|| LeaseError::Vxlan(format!("not an object: {v}")))?;
        let o = CiObject::new(m);
        let vni = o.uint("VNI", u64::from(u32::MAX))?.unwrap_or(0) as u32;
        let mac = o
            .str("VtepMAC")?
            .ok_or_else(|| LeaseError::Vxlan("VtepMAC is missing".into()))?;
        let vtep_mac: MacAddr = mac
            .parse()
            .map_err(|e: crate::mac::MacParseError| LeaseError::Vxlan(e.to_string()))?;
        if !vtep_mac.is_unicast() {
            return Err(LeaseError::Vxlan(format!(
                "VtepMAC {vtep_mac} is not a unicast address (no VTEP has a multicast, broadcast or all-zero MAC)"
            )));
        }
        Ok(Self { vni, vtep_mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    /// A lease padded to etcd's limit keeps only what backends read of its data; a normal
    /// one is kept byte for byte.
    #[test]
    fn padded_backend_data_keeps_only_the_known_fields() {
        let pad = "x".repeat(100_000);
        let text = format!(
            r#"{{"PublicIP":"10.0.0.9","BackendType":"vxlan","BackendData":{{"vni":1,"VtepMAC":"02:00:00:00:00:09","Pad":"{pad}","Port":"{pad}"}},"BackendV6Data":"{pad}"}}"#
        );
        let a = LeaseAttrs::from_json(text.as_bytes()).unwrap();
        let d = a.backend_data.as_ref().unwrap();
        assert!(d.get().len() < 100, "{d}");
        let v = VxlanData::from_raw(d).unwrap();
        assert_eq!(
            (v.vni, v.vtep_mac.to_string().as_str()),
            (1, "02:00:00:00:00:09")
        );
        assert_eq!(a.backend_v6_data.as_ref().unwrap().get(), "{}");
        let small = LeaseAttrs::from_json(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(small.to_json(), DOC_EXAMPLE);
    }

    #[test]
    fn upstream_example_round_trips_byte_for_byte() {
        let a = LeaseAttrs::from_json(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(a.backend_type, "vxlan");
        let d = VxlanData::from_raw(a.backend_data.as_ref().unwrap()).unwrap();
        assert_eq!(d.vni, 1);
        assert_eq!(d.vtep_mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(a.to_json(), DOC_EXAMPLE);
    }

    #[test]
    fn udp_lease_omits_backend_fields_and_dual_stack_keeps_v6() {
        let a = LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 0, 0, 1),
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        };
        assert_eq!(a.to_json(), r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#);
        let v6 = r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}}"#;
        assert_eq!(LeaseAttrs::from_json(v6.as_bytes()).unwrap().to_json(), v6);
    }

    #[test]
    fn reading_is_case_insensitive_and_tolerant() {
        let a =
            LeaseAttrs::from_json(br#"{"publicip":"10.1.1.1","backendtype":"host-gw","Extra":1}"#)
                .unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(10, 1, 1, 1));
        assert_eq!(a.backend_type, "host-gw");
        assert_eq!(a.public_ipv6, None);
    }

    #[test]
    fn backend_data_is_kept_exactly_as_written() {
        // Found by the lease_codec fuzz target: this float did not survive decode/encode/decode
        // through a serde_json Value (…332e+93 came back as …333e+93).
        let text = r#"{"PublicIP":"10.1.1.1","PublicIPv6":null,"BackendType":"x","BackendData":{"n": 9.9033333333333325e+93, "s":"é"}}"#;
        let a = LeaseAttrs::from_json(text.as_bytes()).unwrap();
        assert_eq!(a.to_json(), text);
        assert_eq!(LeaseAttrs::from_json(a.to_json().as_bytes()).unwrap(), a);
        // Case-insensitive, exact spelling preferred, null as absent.
        let a = LeaseAttrs::from_json(
            br#"{"backenddata":{"a":1},"BackendData":{"b":2},"BACKENDV6DATA":null}"#,
        )
        .unwrap();
        assert_eq!(a.backend_data.unwrap().get(), r#"{"b":2}"#);
        assert_eq!(a.backend_v6_data, None);
        assert!(matches!(
            LeaseAttrs::from_json(b"[1]"),
            Err(LeaseError::NotAnObject)
        ));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert!(matches!(
            LeaseAttrs::from_json(b"garbage"),
            Err(LeaseError::Json(_))
        ));
        assert_eq!(
            LeaseAttrs::from_json(br#"{"PublicIP":"10.1.1"}"#)
                .unwrap_err()
                .to_string(),
            r#"lease value: PublicIP: invalid IP address "10.1.1""#
        );
        assert!(VxlanData::from_value(&serde_json::json!({"VNI":1})).is_err());
        assert!(VxlanData::from_value(&serde_json::json!({"VNI":1,"VtepMAC":"nope"})).is_err());
    }
}

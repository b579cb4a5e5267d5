//! The `Backend` block of a vxlan network config, parsed once at start.

/// The `Backend` block of a vxlan network config (upstream `vxlan.go`), keys case-insensitive.
use flannel_core::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    /// 0 = the kernel default, 8472 on Linux.
    pub port: u16,
    /// 0 = the external interface's MTU.
    pub mtu: u32,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

/// VXLAN over IPv4 costs 50 bytes: outer IP (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN over IPv6: outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

impl VxlanConfig {
    pub fn from_backend(
        backend: &serde_json::Value,
    ) -> Result<Self, flannel_core::json_ci::FieldError> {
        let empty = serde_json::Map::new();
        let o = flannel_core::json_ci::CiObject::new(backend.as_object().unwrap_or(&empty));
        Ok(Self {
            vni: o.uint("VNI", u64::from(u32::MAX))?.unwrap_or(1) as u32,
            port: o.uint("Port", u64::from(u16::MAX))?.unwrap_or(0) as u16,
            mtu: o.uint("MTU", u64::from(u32::MAX))?.unwrap_or(0) as u32,
            gbp: o.bool("GBP")?.unwrap_or(false),
            learning: o.bool("Learning")?.unwrap_or(false),
            direct_routing: o.bool("DirectRouting")?.unwrap_or(false),
        })
    }

    /// `flannel.<VNI>` (IPv4) or `flannel-v6.<VNI>` (IPv6).
    pub fn device_name(&self, family: Family) -> String {
        match family {
            Family::V4 => format!("flannel.{}", self.vni),
            Family::V6 => format!("flannel-v6.{}", self.vni),
        }
    }

    /// The device MTU and `FLANNEL_MTU`: (configured MTU or interface MTU) − the overhead of
    /// the family's underlay. Over IPv6 that is 70 bytes (a 40-byte outer header); upstream
    /// subtracts 50 there too, which drops full-size packets.
    pub fn device_mtu(&self, family: Family, iface_mtu: u32) -> u32 {
        let base = if self.mtu > 0 { self.mtu } else { iface_mtu };
        let overhead = match family {
            Family::V4 => VXLAN_OVERHEAD,
            Family::V6 => VXLAN_V6_OVERHEAD,
        };
        base.saturating_sub(overhead)
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let d = VxlanConfig::from_backend(&serde_json::json!({"Type":"vxlan"})).unwrap();
        assert_eq!((d.vni, d.port, d.mtu, d.learning), (1, 0, 0, false));
        assert_eq!(d.device_name(Family::V4), "flannel.1");
        assert_eq!(d.device_name(Family::V6), "flannel-v6.1");
        assert_eq!(d.device_mtu(Family::V4, 1500), 1450);
        assert_eq!(d.device_mtu(Family::V6, 1500), 1430);
        let c = VxlanConfig::from_backend(&serde_json::json!({"vni":42,"port":4789,"mtu":9000}))
            .unwrap();
        assert_eq!(c.device_name(Family::V4), "flannel.42");
        assert_eq!(c.port, 4789);
        assert_eq!(c.device_mtu(Family::V4, 1500), 8950);
        assert!(VxlanConfig::from_backend(&serde_json::json!({"VNI":"1"})).is_err());
        assert!(VxlanConfig::from_backend(&serde_json::json!({"Port":70000})).is_err());
    }
}

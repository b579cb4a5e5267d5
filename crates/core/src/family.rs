//! Address families, and one family's view of a lease: the subnet, public address and backend
//! data a backend programs for IPv4 (`subnet`, `PublicIP`, `BackendData`) or IPv6
//! (`ipv6_subnet`, `PublicIPv6`, `BackendV6Data`). Backends compute one desired state per
//! family through the same code.

use crate::lease::Lease;
use crate::raw_json::RawJson;
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    #[inline]
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }

    #[inline]
    pub fn of_net(n: &IpNet) -> Self {
        Self::of(n.addr())
    }
}

/// What a lease holds for one family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FamilyView<'a> {
    pub subnet: IpNet,
    /// `None` when the lease publishes no address of this family (0.0.0.0 or null).
    pub public: Option<IpAddr>,
    pub data: Option<&'a RawJson>,
}

impl Lease {
    /// The lease's subnet of `family`, if it has one (an IPv6-only lease's IPv4 part is
    /// upstream's degenerate `0.0.0.0/0`: none).
    #[inline]
    pub fn subnet_of(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => (self.subnet.prefix_len() > 0).then_some(IpNet::V4(self.subnet)),
            Family::V6 => self.ipv6_subnet.map(IpNet::V6),
        }
    }

    /// The lease seen in one family; `None` when it has no subnet of that family.
    #[inline]
    pub fn view(&self, family: Family) -> Option<FamilyView<'_>> {
        let subnet = self.subnet_of(family)?;
        let (public, data) = match family {
            Family::V4 => (
                Some(IpAddr::V4(self.attrs.public_ip)).filter(|ip| !ip.is_unspecified()),
                self.attrs.backend_data.as_ref(),
            ),
            Family::V6 => (
                self.attrs
                    .public_ipv6
                    .map(IpAddr::V6)
                    .filter(|ip| !ip.is_unspecified()),
                self.attrs.backend_v6_data.as_ref(),
            ),
        };
        Some(FamilyView {
            subnet,
            public,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    #[test]
    fn each_family_sees_its_own_fields() {
        let mut l = Lease::v4(
            "10.244.1.0/24".parse().unwrap(),
            LeaseAttrs::v4(
                "10.0.0.51".parse().unwrap(),
                "vxlan",
                Some(serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:01"})),
            ),
        );
        assert!(l.view(Family::V6).is_none(), "no IPv6 subnet: no v6 view");
        l.ipv6_subnet = Some("fd00:10:244:1::/64".parse().unwrap());
        l.attrs.public_ipv6 = Some("fd00::51".parse().unwrap());
        l.attrs.backend_v6_data = Some(RawJson::from_value(
            &serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:61"}),
        ));
        let v4 = l.view(Family::V4).unwrap();
        let v6 = l.view(Family::V6).unwrap();
        assert_eq!(v4.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(v4.public, Some("10.0.0.51".parse().unwrap()));
        assert_eq!(v6.subnet.to_string(), "fd00:10:244:1::/64");
        assert_eq!(v6.public, Some("fd00::51".parse().unwrap()));
        assert!(v6.data.unwrap().get().contains("02:00:00:00:00:61"));
        // An IPv6-only lease: its IPv4 part is 0.0.0.0/0, which is no subnet.
        l.subnet = "0.0.0.0/0".parse().unwrap();
        l.attrs.public_ip = "0.0.0.0".parse().unwrap();
        assert!(l.view(Family::V4).is_none());
    }
}

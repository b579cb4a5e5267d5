//! Choosing the external interface and its address (upstream `pkg/ipmatch`, `pkg/ip/iface.go`),
//! as pure functions over a snapshot of the node's links and addresses.

use regex::Regex;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAddr {
    pub index: u32,
    pub ip: IpAddr,
    pub permanent: bool,
    pub temporary: bool,
    pub deprecated: bool,
}

/// The node's links (in kernel order) and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub links: Vec<IfaceLink>,
    pub addrs: Vec<IfaceAddr>,
}

/// Which address families the external interface must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

fn is_global_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_unicast_link_local())
        }
    }
}

fn is_link_local_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

impl Snapshot {
    pub fn link(&self, index: u32) -> Option<&IfaceLink> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn by_name(&self, name: &str) -> Option<&IfaceLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The link holding address `ip`.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&IfaceLink> {
        self.addrs
            .iter()
            .find(|a| a.ip == ip)
            .and_then(|a| self.link(a.index))
    }

    /// Usable addresses of one family on a link, best first: global before link-local,
    /// permanent before dynamic, stable before temporary; deprecated ones left out.
    pub fn usable(&self, index: u32, v6: bool) -> Vec<IpAddr> {
        let mut a: Vec<&IfaceAddr> = self
            .addrs
            .iter()
            .filter(|a| a.index == index && a.ip.is_ipv6() == v6 && !a.deprecated)
            .filter(|a| is_global_unicast(&a.ip) || is_link_local_unicast(&a.ip))
            .collect();
        a.sort_by_key(|a| (!is_global_unicast(&a.ip), !a.permanent, a.temporary));
        a.into_iter().map(|a| a.ip).collect()
    }

    pub fn best_v4(&self, index: u32) -> Option<Ipv4Addr> {
        self.usable(index, false)
            .into_iter()
            .find_map(|ip| match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
    }

    pub fn best_v6(&self, index: u32) -> Option<Ipv6Addr> {
        self.usable(index, true)
            .into_iter()
            .find_map(|ip| match ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
    }

    fn has_families(&self, index: u32, f: Families) -> bool {
        (!f.v4 || self.best_v4(index).is_some()) && (!f.v6 || self.best_v6(index).is_some())
    }

    /// `--iface` by name or by address. `Err` says why this one did not match.
    pub fn by_iface_flag(&self, spec: &str, f: Families) -> Result<&IfaceLink, String> {
        match spec.parse::<IpAddr>() {
            Ok(ip) => self
                .owner_of(ip)
                .ok_or_else(|| format!("no interface has the address {ip}")),
            Err(_) => {
                let l = self
                    .by_name(spec)
                    .ok_or_else(|| "no interface with that name".to_string())?;
                if self.has_families(l.index, f) {
                    Ok(l)
                } else {
                    let missing = if f.v4 && self.best_v4(l.index).is_none() {
                        "IPv4"
                    } else {
                        "IPv6"
                    };
                    Err(format!("{} has no usable {missing} address", l.name))
                }
            }
        }
    }

    /// `--iface-regex`: matched against each interface's usable addresses first (with both
    /// families required on the same interface for dual stack), then against interface names.
    pub fn by_regex(&self, re: &Regex, f: Families) -> Option<&IfaceLink> {
        let by_addr = self.links.iter().find(|l| {
            let m = |v6: bool| {
                self.usable(l.index, v6)
                    .iter()
                    .any(|ip| re.is_match(&ip.to_string()))
            };
            (f.v4 || f.v6) && (!f.v4 || m(false)) && (!f.v6 || m(true))
        });
        by_addr.or_else(|| {
            self.links
                .iter()
                .find(|l| re.is_match(&l.name) && self.has_families(l.index, f))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let link = |index, name: &str| IfaceLink {
            index,
            name: name.into(),
            mtu: 1500,
        };
        let addr = |index, ip: &str, permanent, temporary, deprecated| IfaceAddr {
            index,
            ip: ip.parse().unwrap(),
            permanent,
            temporary,
            deprecated,
        };
        Snapshot {
            links: vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")],
            addrs: vec![
                addr(1, "127.0.0.1", true, false, false),
                addr(2, "fe80::1", true, false, false),
                addr(2, "2001:db8::dead", false, true, false),
                addr(2, "2001:db8::beef", false, false, true),
                addr(2, "2001:db8::1", true, false, false),
                addr(2, "10.0.0.5", true, false, false),
                addr(3, "192.168.7.9", true, false, false),
            ],
        }
    }

    const V4: Families = Families {
        v4: true,
        v6: false,
    };
    const DUAL: Families = Families { v4: true, v6: true };

    #[test]
    fn address_order_is_upstreams() {
        let s = snap();
        let v6: Vec<String> = s.usable(2, true).iter().map(|i| i.to_string()).collect();
        assert_eq!(
            v6,
            ["2001:db8::1", "2001:db8::dead", "fe80::1"],
            "permanent global, then temporary, then link-local; deprecated dropped"
        );
        assert_eq!(s.best_v4(2), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(s.best_v4(1), None, "loopback is not usable");
    }

    #[test]
    fn iface_by_name_or_address_with_reasons() {
        let s = snap();
        assert_eq!(s.by_iface_flag("eth1", V4).unwrap().index, 3);
        assert_eq!(s.by_iface_flag("192.168.7.9", V4).unwrap().name, "eth1");
        assert_eq!(
            s.by_iface_flag("eth9", V4).unwrap_err(),
            "no interface with that name"
        );
        assert_eq!(
            s.by_iface_flag("10.9.9.9", V4).unwrap_err(),
            "no interface has the address 10.9.9.9"
        );
        assert_eq!(
            s.by_iface_flag("eth1", DUAL).unwrap_err(),
            "eth1 has no usable IPv6 address"
        );
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let s = snap();
        assert_eq!(
            s.by_regex(&Regex::new(r"^192\.168\.").unwrap(), V4)
                .unwrap()
                .name,
            "eth1"
        );
        assert_eq!(
            s.by_regex(&Regex::new(r"^eth").unwrap(), V4).unwrap().name,
            "eth0",
            "names, in kernel order"
        );
        assert_eq!(
            s.by_regex(&Regex::new(r"^(10\.|2001:)").unwrap(), DUAL)
                .unwrap()
                .name,
            "eth0"
        );
        assert!(s.by_regex(&Regex::new(r"^nomatch$").unwrap(), V4).is_none());
    }
}

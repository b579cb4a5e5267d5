//! Names and addresses of everything a lab creates.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LAB: &str = "flab";
pub const DEFAULT_STATE_ROOT: &str = "/run/flannel-lab";
/// The tutorial's network config (`{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`)
/// for a given backend.
pub fn net_conf(backend: &str, direct_routing: bool, family: IpFamily, nftables: bool) -> String {
    let dr = if direct_routing {
        r#", "DirectRouting": true"#
    } else {
        ""
    };
    let v6 = match family {
        IpFamily::V4 => "",
        IpFamily::Dual => r#", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56""#,
        IpFamily::V6 => {
            r#", "EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56""#
        }
    };
    let nft = if nftables {
        r#", "EnableNFTables": true"#
    } else {
        ""
    };
    format!(r#"{{"Network": "10.244.0.0/16"{v6}{nft}, "Backend": {{"Type": "{backend}"{dr}}}}}"#)
}

/// Which pod address families a lab carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpFamily {
    #[default]
    V4,
    /// IPv4 and IPv6: an IPv6 underlay beside the IPv4 one, pods with both addresses.
    Dual,
    /// IPv6 only (`EnableIPv4: false`): pods with an IPv6 address alone; Kubernetes mode.
    V6,
}

impl IpFamily {
    /// Whether pods get an IPv6 address.
    pub fn has_v6(self) -> bool {
        self != Self::V4
    }

    /// Whether pods get an IPv4 address.
    pub fn has_v4(self) -> bool {
        self != Self::V6
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "ipv4" => Ok(Self::V4),
            "dual" => Ok(Self::Dual),
            "ipv6" => Ok(Self::V6),
            other => anyhow::bail!("--ip-family {other}: ipv4, dual or ipv6"),
        }
    }
}

/// The `i`-th node's IPv6 underlay address, beside the tutorial's 10.0.0.50+i: fd00::50+i.
pub fn node_ip6(i: usize) -> String {
    format!("fd00::{}", 50 + i)
}

/// Backends the lab can run.
pub const BACKENDS: &[&str] = &["vxlan", "host-gw", "udp", "wireguard"];
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// Where the Kubernetes API fake listens on master1, in kube mode.
pub const API_PORT: u16 = 6443;

/// The podCIDR kube-controller-manager gives the `i`-th node (`--cluster-cidr=10.244.0.0/16`,
/// /24 per node, in order).
pub fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// `master1`, `node1`, `node2`, ... as in the tutorial.
pub fn node_name(i: usize) -> String {
    if i == 0 {
        "master1".into()
    } else {
        format!("node{i}")
    }
}

/// 10.0.0.50, .51, ... on the underlay. With two segments, odd nodes sit on 10.0.1.0/24.
pub fn node_ip(i: usize) -> Ipv4Addr {
    node_ip_on(i, 1)
}

pub fn node_segment(i: usize, segments: usize) -> usize {
    i % segments.max(1)
}

pub fn node_ip_on(i: usize, segments: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, node_segment(i, segments) as u8, 50 + i as u8)
}

pub fn switch_ns(lab: &str) -> String {
    format!("{lab}-sw")
}

pub fn node_ns(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

pub fn pod_name(node: &str, k: usize) -> String {
    format!("{node}-pod{k}")
}

pub fn pod_ns(lab: &str, pod: &str) -> String {
    format!("{lab}-{pod}")
}

/// Every namespace of lab `lab` starts with this; `down` removes exactly these.
pub fn ns_prefix(lab: &str) -> String {
    format!("{lab}-")
}

pub fn state_dir(root: &Path, lab: &str) -> PathBuf {
    root.join(lab)
}

/// Lab names become namespace and file names: keep them short and plain.
pub fn valid_lab_name(lab: &str) -> bool {
    !lab.is_empty()
        && lab.len() <= 20
        && lab.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && lab.as_bytes()[0].is_ascii_alphabetic()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_names_and_addresses() {
        assert_eq!(node_name(0), "master1");
        assert_eq!(node_name(2), "node2");
        assert_eq!(node_ip(2), Ipv4Addr::new(10, 0, 0, 52));
        assert_eq!(node_ip_on(1, 2), Ipv4Addr::new(10, 0, 1, 51));
        assert_eq!(node_ip_on(2, 2), Ipv4Addr::new(10, 0, 0, 52));
        assert_eq!(
            net_conf("vxlan", false, IpFamily::V4, false),
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#
        );
        assert_eq!(
            net_conf("vxlan", true, IpFamily::V4, false),
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#
        );
        assert_eq!(
            net_conf("host-gw", false, IpFamily::Dual, true),
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "EnableNFTables": true, "Backend": {"Type": "host-gw"}}"#
        );
        assert_eq!(node_ip6(1), "fd00::51");
        assert_eq!(IpFamily::parse("ipv6").unwrap(), IpFamily::V6);
        assert!(IpFamily::parse("v7").is_err());
        assert_eq!(node_ns("flab", "node1"), "flab-node1");
        assert_eq!(pod_ns("flab", &pod_name("node1", 2)), "flab-node1-pod2");
        assert!(valid_lab_name("flab"));
        assert!(
            !valid_lab_name("a-b")
                && !valid_lab_name("")
                && !valid_lab_name("1x")
                && !valid_lab_name("a/b")
        );
    }
}

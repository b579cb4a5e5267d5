//! What the doctor can know of flannel with flanneld not answering: subnet.env (the network,
//! our subnet, the MTU, masquerading), the flannel devices that exist (and so the backend),
//! the firewall tables that exist, the external interface (the default route's). Enough for
//! every check that judges the node rather than flanneld's view of the cluster; those others
//! are skipped (see `checks::NEEDS_FLANNELD`).

use flannel_core::state::{LeaseView, NodeInfo, StateSnapshot};
use flannel_net::{NetOps, Netlink};
use ipnet::IpNet;
use std::path::Path;

/// The backend a flannel device name belongs to.
pub fn backend_of_device(name: &str) -> Option<&'static str> {
    if name.starts_with("flannel-wg") {
        Some("wireguard")
    } else if name == "flannel0" {
        Some("udp")
    } else if name.starts_with("flannel.") || name.starts_with("flannel-v6.") {
        Some("vxlan")
    } else {
        None
    }
}

/// A state as the node shows it: `subnet_file`'s content (text), the link names, the
/// external interface and its MTU, and whether flannel's nftables table exists.
pub fn state_of(
    subnet_file: &Path,
    subnet_env: Option<&str>,
    links: &[String],
    ext: Option<(String, u32)>,
    nftables: bool,
) -> StateSnapshot {
    let env = subnet_env
        .map(flannel_core::subnet_env::SubnetFile::parse)
        .unwrap_or_default();
    let devices: Vec<String> = links
        .iter()
        .filter(|l| backend_of_device(l).is_some())
        .cloned()
        .collect();
    // No flannel device: host-gw, if flannel runs here at all.
    let backend = devices
        .first()
        .and_then(|d| backend_of_device(d))
        .unwrap_or("host-gw");
    let (iface, iface_mtu) = ext.unwrap_or_default();
    let mut config = serde_json::json!({"Backend": {"Type": backend}});
    if let Some(n) = env.network() {
        config["Network"] = n.to_string().into();
    }
    if let Some(n) = env.ipv6_network() {
        config["IPv6Network"] = n.to_string().into();
    }
    StateSnapshot {
        config,
        node: NodeInfo {
            backend: backend.into(),
            iface,
            iface_mtu,
            mtu: env.mtu.unwrap_or(0),
            devices,
            subnet_file: subnet_file.display().to_string(),
            firewall: if nftables { "nftables" } else { "iptables" }.into(),
            ip_masq: env.ipmasq.unwrap_or(false),
            forward_rules: true,
            ..Default::default()
        },
        own: LeaseView {
            subnet: env.subnet.map(IpNet::V4),
            subnet6: env.ipv6_subnet.map(IpNet::V6),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// [`state_of`] from this node.
pub async fn read(subnet_file: &Path) -> anyhow::Result<StateSnapshot> {
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let names: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    // The external interface: the default route's, as flanneld picks it without --iface;
    // else the first interface with an IPv4 address that is none of flannel's or the pods'.
    let by_route = match nl.default_route_link(flannel_net::Family::V4).await {
        Ok(Some(i)) => links.iter().find(|l| l.index == i),
        _ => None,
    };
    let with_addr: Vec<u32> = nl
        .addrs(None, flannel_net::Family::V4)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let ext = by_route
        .or_else(|| {
            links.iter().find(|l| {
                with_addr.contains(&l.index)
                    && l.name != "lo"
                    && l.name != "cni0"
                    && !l.name.starts_with("veth")
                    && backend_of_device(&l.name).is_none()
            })
        })
        .map(|l| (l.name.clone(), l.mtu));
    let table = |family: &str, name: &str| {
        std::process::Command::new("nft")
            .args(["list", "table", family, name])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let nftables = table("ip", "flannel-ipv4") || table("ip6", "flannel-ipv6");
    let text = std::fs::read_to_string(subnet_file).ok();
    let mut s = state_of(subnet_file, text.as_deref(), &names, ext, nftables);
    // flanneld down: its policy table, when there, says --network-policy was on.
    s.node.network_policy = table("inet", "flannel-policy");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_backend_and_mtu_come_from_the_node() {
        let env = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let s = state_of(
            Path::new("/run/flannel/subnet.env"),
            Some(env),
            &[
                "lo".into(),
                "eth0".into(),
                "flannel.1".into(),
                "cni0".into(),
            ],
            Some(("eth0".into(), 1500)),
            false,
        );
        assert_eq!(s.node.backend, "vxlan");
        assert_eq!(s.node.devices, vec!["flannel.1".to_string()]);
        assert_eq!(s.node.mtu, 1450);
        assert_eq!((s.node.iface.as_str(), s.node.iface_mtu), ("eth0", 1500));
        assert!(s.node.ip_masq);
        assert_eq!(s.own.subnet.unwrap().to_string(), "10.244.5.0/24");
        assert_eq!(s.config["Network"], "10.244.0.0/16");
        let none = state_of(Path::new("/x"), None, &["eth0".into()], None, true);
        assert_eq!(none.node.backend, "host-gw");
        assert_eq!(none.node.firewall, "nftables");
        assert!(none.own.subnet.is_none());
    }
}

//! A node on the fake kernel: `lo`, `eth0` with 10.0.0.50/24 and its connected route, and
//! leases in 10.244.0.0/16 as the backends' tests need them.

#![allow(dead_code)]

use flannel_backend::ExternalInterface;
use flannel_core::lease::VxlanData;
use flannel_core::raw_json::RawJson;
use flannel_core::{Lease, LeaseAttrs, MacAddr};
use flannel_net::fake::{Call, FakeNetlink};
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub const ETH0: u32 = 2;
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

/// A fresh fake kernel holding what a node has before flanneld starts.
pub fn node() -> (FakeNetlink, ExternalInterface) {
    let nl = FakeNetlink::node(net("10.0.0.50/24")).with_default_route(ip("10.0.0.1"));
    let ext = ExternalInterface::v4(ETH0, "eth0", 1500, NODE_IP);
    (nl, ext)
}

pub use flannel_testkit::{ip, net};

pub fn network() -> Ipv4Net {
    "10.244.0.0/16".parse().expect("network")
}

/// Peer `i`'s subnet, 10.244.i.0/24.
pub fn subnet(i: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("subnet")
}

/// The VTEP MAC a node with this public IP publishes in these tests.
pub fn mac_of(public: Ipv4Addr) -> MacAddr {
    let o = public.octets();
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// A vxlan lease for subnet `i` held by the node at `public`.
pub fn vxlan_lease(i: u8, public: Ipv4Addr) -> Lease {
    vxlan_lease_with_mac(i, public, mac_of(public))
}

pub fn vxlan_lease_with_mac(i: u8, public: Ipv4Addr, mac: MacAddr) -> Lease {
    let data = VxlanData {
        vni: 1,
        vtep_mac: mac,
    };
    Lease::v4(
        subnet(i),
        LeaseAttrs {
            public_ip: public,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(RawJson::from_value(&data.to_value())),
            backend_v6_data: None,
        },
    )
}

/// A host-gw lease for subnet `i` held by the node at `public`.
pub fn hostgw_lease(i: u8, public: Ipv4Addr) -> Lease {
    Lease::v4(
        subnet(i),
        LeaseAttrs {
            public_ip: public,
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        },
    )
}

/// Our own lease: subnet 10.244.0.0/24.
pub fn own_vxlan(mac: MacAddr) -> Lease {
    vxlan_lease_with_mac(0, NODE_IP, mac)
}

pub fn peer_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// The dumps among `calls`.
pub fn dumps(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.is_dump()).collect()
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

pub const NODE_IP6: &str = "fd00::50";

/// [`node`] with an IPv6 underlay too: fd00::50/64 on eth0.
pub fn dual_node() -> (FakeNetlink, ExternalInterface) {
    let (nl, mut ext) = node();
    nl.with(|s| {
        s.addrs.push((ETH0, net("fd00::50/64")));
        s.add_foreign_route(net("fd00::/64"), None, ETH0, 2);
    });
    ext.iface_v6_addr = NODE_IP6.parse().ok();
    ext.ext_v6_addr = ext.iface_v6_addr;
    (nl, ext)
}

pub fn network6() -> ipnet::Ipv6Net {
    "fd00:10:244::/56".parse().expect("network")
}

/// The IPv6 VTEP MAC a node with this IPv4 public address publishes in these tests.
pub fn mac6_of(public: Ipv4Addr) -> MacAddr {
    let o = public.octets();
    MacAddr([0x0a, 0x66, o[0], o[1], o[2], o[3]])
}

/// A dual-stack vxlan lease: subnet `i` in both families, node `n` (10.0.0.n and fd00::n).
pub fn dual_lease(i: u8, n: u8) -> Lease {
    let v4 = peer_ip(n);
    let mut l = vxlan_lease(i, v4);
    l.ipv6_subnet = Some(
        format!("fd00:10:244:{i:x}::/64")
            .parse()
            .expect("v6 subnet"),
    );
    l.attrs.public_ipv6 = Some(format!("fd00::{n:x}").parse().expect("v6 address"));
    let data = VxlanData {
        vni: 1,
        vtep_mac: mac6_of(v4),
    };
    l.attrs.backend_v6_data = Some(RawJson::from_value(&data.to_value()));
    l
}

/// What the kernel holds on our device: routes, neighbours, FDB entries.
pub type DeviceState = (
    BTreeMap<IpNet, Option<IpAddr>>,
    BTreeMap<IpAddr, MacAddr>,
    BTreeMap<MacAddr, IpAddr>,
);

pub fn device_state(nl: &FakeNetlink, idx: u32) -> DeviceState {
    nl.with(|s| {
        let neigh = s
            .neighbours
            .iter()
            .filter(|((i, _), _)| *i == idx)
            .map(|((_, ip), m)| (*ip, *m))
            .collect();
        let fdb = s
            .fdb
            .iter()
            .filter(|((i, _), _)| *i == idx)
            .map(|((_, m), d)| (*m, *d))
            .collect();
        (s.routes_on(idx), neigh, fdb)
    })
}

//! The set of claims on subnets (etcd keys or Nodes, anyone with write access can make them):
//! any sequence of claims, moves, removals and listings never panics; the programmed leases
//! never overlap each other or our own subnet; every claim left out overlaps one programmed
//! (or ours); every holder is either programmed or left out.
#![no_main]
use flannel_core::{Lease, LeaseAttrs};
use flannel_subnet::{Claim, LeaseEvent, LeaseSet, Owner};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;

fn lease(b: &[u8]) -> Lease {
    let len = 8 + b[2] % 24;
    let v4 = Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, b[3], b[4]), len)
        .unwrap()
        .trunc();
    let mut l = Lease::v4(
        v4,
        LeaseAttrs::v4(std::net::Ipv4Addr::new(10, 0, 0, b[5]), "vxlan", None),
    );
    if b[1] & 0x80 != 0 {
        let v6 = Ipv6Net::new(
            std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(b[3]), 0, 0, 0, 0),
            48 + b[4] % 32,
        )
        .unwrap()
        .trunc();
        l.ipv6_subnet = Some(v6);
    }
    if b[1] & 0x40 != 0 {
        // IPv6 only: the degenerate IPv4 part.
        l.subnet = Ipv4Net::default();
    }
    l
}

fuzz_target!(|data: &[u8]| {
    let own = Lease::v4(
        "10.244.0.0/24".parse().unwrap(),
        LeaseAttrs::v4(std::net::Ipv4Addr::new(10, 0, 0, 50), "vxlan", None),
    );
    let nets = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10:244::/48".parse().unwrap(),
    ];
    let mut s = LeaseSet::with_own(Owner::new("own"), own.key(), nets);
    for b in data.chunks_exact(6) {
        let who = Owner::new(&format!("h{}", b[0] % 16));
        let ev = match b[1] % 8 {
            0..=4 => LeaseEvent::Added(Claim::new(who, lease(b), i64::from(b[5]))),
            5 | 6 => LeaseEvent::Removed(who),
            _ => LeaseEvent::Snapshot(
                s.claims()
                    .into_iter()
                    .map(|(o, l)| Claim::new(o.clone(), l.clone(), 0))
                    .collect(),
            ),
        };
        s.apply(ev);
        let _ = s.take_touched();
        let nets = |l: &Lease| -> Vec<IpNet> {
            [
                (l.subnet.prefix_len() > 0).then_some(IpNet::V4(l.subnet)),
                l.ipv6_subnet.map(IpNet::V6),
            ]
            .into_iter()
            .flatten()
            .collect()
        };
        let inside = |n: &IpNet| {
            n.to_string().starts_with("10.244.") && n.prefix_len() >= 16
                || n.to_string().starts_with("fd00:10:244:") && n.prefix_len() >= 48
        };
        let acc: Vec<IpNet> = s.as_slice().iter().flat_map(nets).filter(inside).collect();
        for (i, a) in acc.iter().enumerate() {
            for b in &acc[i + 1..] {
                assert!(!(a.contains(b) || b.contains(a)), "{a} and {b} both programmed");
            }
            let o = IpNet::V4(own.subnet);
            assert!(!(a.contains(&o) || o.contains(a)), "{a} overlaps our own");
        }
        for c in s.conflicts() {
            let own_net = IpNet::V4(own.subnet);
            let blocked = acc
                .iter()
                .chain(std::iter::once(&own_net))
                .any(|a| a.contains(&c.subnet) || c.subnet.contains(a))
                || s.as_slice().iter().flat_map(nets).any(|n| n == c.subnet);
            assert!(blocked, "{c:?} waits for nothing");
        }
        assert_eq!(s.claims().len(), s.len() + s.conflicts().len());
    }
});

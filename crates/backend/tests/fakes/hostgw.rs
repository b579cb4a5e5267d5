//! The host-gw backend against the fake kernel: routes via peers, foreign routes kept, the
//! incremental path and repairs without dumps, the NAT check. Runs as any user.

use crate::common::*;
use flannel_backend::hostgw::HostGwBackend;
use flannel_backend::Backend;
use flannel_net::fake::{Call, FakeNetlink, ENOBUFS};
use flannel_net::monitor::Change;
use flannel_net::RouteWrite;
use std::collections::BTreeMap;

fn own() -> flannel_core::Lease {
    hostgw_lease(0, NODE_IP)
}

fn backend(nl: &FakeNetlink) -> HostGwBackend<FakeNetlink> {
    let (_, ext) = node();
    HostGwBackend::register(nl.clone(), ext, &[ipnet::IpNet::V4(network())]).expect("register")
}

/// Our routes on eth0 (proto 252): destination → gateway.
fn our_routes(nl: &FakeNetlink) -> BTreeMap<ipnet::IpNet, Option<std::net::IpAddr>> {
    nl.with(|s| {
        s.routes
            .iter()
            .filter(|r| r.entry.ours() && r.entry.oif == Some(ETH0))
            .map(|r| (r.entry.dst, r.entry.gw))
            .collect()
    })
}

fn expected(leases: &[flannel_core::Lease]) -> BTreeMap<ipnet::IpNet, Option<std::net::IpAddr>> {
    leases
        .iter()
        .map(|l| {
            (
                ipnet::IpNet::V4(l.subnet),
                Some(std::net::IpAddr::V4(l.attrs.public_ip)),
            )
        })
        .collect()
}

#[test]
fn a_node_behind_nat_is_refused_with_upstreams_reason() {
    let (nl, mut ext) = node();
    ext.ext_addr = "203.0.113.9".parse().expect("ip");
    let e = HostGwBackend::register(nl, ext, &[ipnet::IpNet::V4(network())])
        .err()
        .expect("refused");
    assert!(e.to_string().contains("differs from interface IP"), "{e}");
}

#[test]
fn peers_are_routed_via_their_public_ip_and_foreign_routes_are_left_alone() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl);
        // Someone else routes peer 2's subnet; our stale route for a gone peer is there.
        nl.with(|s| {
            s.add_foreign_route(net("10.244.2.0/24"), Some(ip("10.0.0.99")), ETH0, 4);
            s.routes.push(flannel_net::fake::FakeRoute {
                entry: flannel_net::RouteEntry {
                    dst: net("10.244.9.0/24"),
                    gw: Some(ip("10.0.0.59")),
                    oif: Some(ETH0),
                    protocol: 252,
                    unicast: true,
                },
                metric: 0,
                onlink: false,
            });
        });
        let leases: Vec<_> = (1..=3).map(|i| hostgw_lease(i, peer_ip(50 + i))).collect();
        let r = b.reconcile(&own(), &leases).await.expect("reconcile");
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        let want: Vec<_> = leases
            .iter()
            .filter(|l| l.subnet != subnet(2))
            .cloned()
            .collect();
        assert_eq!(our_routes(&nl), expected(&want));
        let routes = nl.with(|s| s.routes_on(ETH0));
        assert_eq!(
            routes.get(&net("10.244.2.0/24")),
            Some(&Some(ip("10.0.0.99")))
        );
        assert_eq!(
            routes.get(&net("10.0.0.0/24")),
            Some(&None),
            "connected route kept"
        );
        assert!(b.expected_change(&Change::RouteGone(net("10.244.9.0/24"))));
    });
}

#[test]
fn lease_events_and_repairs_touch_only_their_own_routes() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl);
        let mut leases: Vec<_> = (1..=40).map(|i| hostgw_lease(i, peer_ip(50 + i))).collect();
        b.reconcile(&own(), &leases).await.expect("reconcile");
        nl.take_calls();

        let new = hostgw_lease(99, peer_ip(199));
        let r = b
            .apply_delta(&own(), std::slice::from_ref(&new), &[])
            .await
            .expect("delta");
        assert_eq!(r.map(|r| r.failed), Some(0));
        assert_eq!(
            nl.take_calls(),
            vec![Call::WriteRoute(
                net("10.244.99.0/24"),
                ip("10.0.0.199"),
                ETH0,
                RouteWrite::Create
            )]
        );
        leases.push(new);
        // The peer moved to another address: replaced in place.
        let moved = hostgw_lease(99, peer_ip(200));
        b.apply_delta(&own(), std::slice::from_ref(&moved), &[])
            .await
            .expect("delta");
        assert_eq!(
            nl.take_calls(),
            vec![Call::WriteRoute(
                net("10.244.99.0/24"),
                ip("10.0.0.200"),
                ETH0,
                RouteWrite::Replace
            )]
        );
        b.apply_delta(&own(), &[], std::slice::from_ref(&moved))
            .await
            .expect("delta");
        assert_eq!(
            nl.take_calls(),
            vec![Call::DelRoute(
                net("10.244.99.0/24"),
                ip("10.0.0.200"),
                ETH0
            )]
        );
        leases.pop();
        assert_eq!(our_routes(&nl), expected(&leases));

        // A route deleted by hand comes back from its notification alone; an ARP entry
        // expiring is none of ours.
        nl.with(|s| s.routes.retain(|r| r.entry.dst != net("10.244.7.0/24")));
        let r = b
            .repair(&[
                Change::RouteGone(net("10.244.7.0/24")),
                Change::NeighbourGone(ETH0, ip("10.0.0.1")),
            ])
            .await
            .expect("repair")
            .expect("repaired");
        assert_eq!((r.added, r.repairs.route), (1, 1));
        assert_eq!(
            nl.take_calls(),
            vec![Call::WriteRoute(
                net("10.244.7.0/24"),
                ip("10.0.0.57"),
                ETH0,
                RouteWrite::Create
            )]
        );
        assert_eq!(our_routes(&nl), expected(&leases));

        // A failed write: the next event asks for a full pass, which heals.
        nl.fail(|c| matches!(c, Call::WriteRoute(..)), ENOBUFS, 1);
        let l = hostgw_lease(98, peer_ip(198));
        let r = b
            .apply_delta(&own(), std::slice::from_ref(&l), &[])
            .await
            .expect("delta");
        assert_eq!(r.map(|r| r.failed), Some(1));
        leases.push(l);
        assert!(b
            .apply_delta(&own(), &[], &[])
            .await
            .expect("delta")
            .is_none());
        let r = b.reconcile(&own(), &leases).await.expect("reconcile");
        assert_eq!(our_routes(&nl), expected(&leases));
        assert_eq!(r.repairs.route, 0, "a route never written is not a repair");

        // The full pass counts a route it had written and finds gone as a repair.
        nl.with(|s| s.routes.retain(|r| r.entry.dst != net("10.244.7.0/24")));
        let r = b.reconcile(&own(), &leases).await.expect("reconcile");
        assert_eq!((r.added, r.repairs.route), (1, 1));
    });
}

fn dual_hostgw_lease(i: u8, n: u8) -> flannel_core::Lease {
    let mut l = hostgw_lease(i, peer_ip(n));
    l.ipv6_subnet = Some(
        format!("fd00:10:244:{i:x}::/64")
            .parse()
            .expect("v6 subnet"),
    );
    l.attrs.public_ipv6 = Some(format!("fd00::{n:x}").parse().expect("v6 address"));
    l
}

#[test]
fn ipv6_peers_are_routed_via_their_public_ipv6_beside_ipv4() {
    block(async {
        let (nl, ext) = dual_node();
        let nets = [ipnet::IpNet::V4(network()), ipnet::IpNet::V6(network6())];
        let mut b = HostGwBackend::register(nl.clone(), ext, &nets).expect("register");
        let own = dual_hostgw_lease(0, 50);
        let leases: Vec<_> = (1..=3).map(|i| dual_hostgw_lease(i, 50 + i)).collect();
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        assert_eq!(r.failed, 0);
        let routes = our_routes(&nl);
        assert_eq!(routes.len(), 6, "{routes:?}");
        assert_eq!(
            routes.get(&net("fd00:10:244:2::/64")),
            Some(&Some(ip("fd00::34")))
        );
        // A v6 lease going, and a v6 route deleted by hand: their own requests only.
        nl.take_calls();
        b.apply_delta(&own, &[], &[leases[0].clone()])
            .await
            .expect("delta")
            .expect("incremental");
        let calls = nl.take_calls();
        assert!(dumps(&calls).is_empty(), "{calls:?}");
        assert!(calls.contains(&Call::DelRoute(
            net("fd00:10:244:1::/64"),
            ip("fd00::33"),
            ETH0
        )));
        assert!(calls.contains(&Call::DelRoute(net("10.244.1.0/24"), ip("10.0.0.51"), ETH0)));
        nl.with(|s| {
            s.routes
                .retain(|r| r.entry.dst != net("fd00:10:244:3::/64"))
        });
        let r = b
            .repair(&[Change::RouteGone(net("fd00:10:244:3::/64"))])
            .await
            .expect("repair")
            .expect("repaired");
        assert_eq!(r.added, 1);
        assert_eq!(our_routes(&nl).len(), 4);
    });
}

#[test]
fn ipv6_without_an_ipv6_address_is_refused() {
    let (nl, ext) = node();
    let nets = [ipnet::IpNet::V4(network()), ipnet::IpNet::V6(network6())];
    let e = HostGwBackend::register(nl, ext, &nets)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("no IPv6 address"), "{e}");
}

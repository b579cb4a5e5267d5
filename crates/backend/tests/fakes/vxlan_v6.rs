//! The vxlan backend's IPv6 overlay (`flannel-v6.<VNI>`) on the fake kernel, beside the IPv4
//! one: device creation and adoption, MAC kept, MTU for an IPv6 underlay, v6 entries added and
//! removed with leases, repaired from notifications. Runs as any user.

use crate::common::*;
use flannel_backend::vxlan::VxlanConfig;
use flannel_backend::vxlan::{VxlanBackend, VxlanNetworks};
use flannel_backend::Backend;
use flannel_core::{Family, Lease, MacAddr};
use flannel_net::fake::{Call, FakeNetlink};
use flannel_net::monitor::Change;
use flannel_net::RouteWrite;

const MAC4: MacAddr = MacAddr([0x0a, 0x58, 1, 2, 3, 4]);
const MAC6: MacAddr = MacAddr([0x0a, 0x66, 1, 2, 3, 4]);

fn cfg() -> VxlanConfig {
    VxlanConfig::from_backend(&serde_json::json!({"Type": "vxlan"})).expect("config")
}

fn nets() -> VxlanNetworks {
    VxlanNetworks {
        v4: Some((network(), Some(MAC4))),
        v6: Some((network6(), Some(MAC6))),
    }
}

async fn backend(nl: &FakeNetlink) -> VxlanBackend<FakeNetlink> {
    let (_, ext) = dual_node();
    VxlanBackend::register(nl.clone(), cfg(), ext, nets())
        .await
        .expect("register")
}

/// Our own dual-stack lease: 10.244.0.0/24 and fd00:10:244::/64.
fn own() -> Lease {
    let mut l = dual_lease(0, 50);
    l.attrs.backend_data = None;
    l
}

#[test]
fn both_devices_are_created_with_their_macs_and_mtus_and_published() {
    block(async {
        let (nl, _) = dual_node();
        let b = backend(&nl).await;
        let v6 = nl.with(|s| s.links[&b.device_index(Family::V6)].clone());
        assert_eq!(v6.name, "flannel-v6.1");
        assert_eq!(v6.mac, Some(MAC6));
        assert_eq!(v6.mtu, 1430, "VXLAN over IPv6 costs 70 bytes");
        let info = v6.vxlan.expect("vxlan info");
        assert_eq!(info.local, Some(ip("fd00::50")));
        assert_eq!(info.dev, Some(ETH0));
        let v4 = nl.with(|s| s.links[&b.device_index(Family::V4)].clone());
        assert_eq!((v4.name.as_str(), v4.mtu), ("flannel.1", 1450));
        assert_eq!(b.mtu(), 1430, "FLANNEL_MTU fits both devices");
        let attrs = b.lease_attrs();
        assert!(attrs
            .backend_v6_data
            .expect("v6 data")
            .get()
            .contains("0a:66:01:02:03:04"));
        assert!(attrs
            .backend_data
            .expect("v4 data")
            .get()
            .contains("0a:58:01:02:03:04"));
        assert_eq!(attrs.public_ipv6, Some("fd00::50".parse().expect("ip")));

        // A restart adopts both devices and keeps their MACs, whatever it would pick itself.
        nl.take_calls();
        let (_, ext) = dual_node();
        let again = VxlanBackend::register(
            nl.clone(),
            cfg(),
            ext,
            VxlanNetworks {
                v4: Some((network(), None)),
                v6: Some((network6(), None)),
            },
        )
        .await
        .expect("register");
        assert_eq!(again.vtep_mac(Family::V6), Some(MAC6));
        assert_eq!(again.vtep_mac(Family::V4), Some(MAC4));
        assert!(!nl.take_calls().iter().any(Call::is_write));
    });
}

#[test]
fn ipv6_without_an_ipv6_address_is_refused_with_the_reason() {
    block(async {
        let (nl, ext) = node();
        let e = VxlanBackend::register(nl, cfg(), ext, nets())
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("has no IPv6 address"), "{e}");
    });
}

#[test]
fn ipv6_peers_get_their_entries_on_the_v6_device_and_lose_them_with_their_lease() {
    block(async {
        let (nl, _) = dual_node();
        let mut b = backend(&nl).await;
        let (i4, i6) = (b.device_index(Family::V4), b.device_index(Family::V6));
        let leases: Vec<Lease> = (1..=3).map(|i| dual_lease(i, 50 + i)).collect();
        let r = b.reconcile(&own(), &leases).await.expect("reconcile");
        assert_eq!(r.failed, 0);
        assert!(nl.with(|s| s.addrs.contains(&(i6, net("fd00:10:244::/128")))));
        let (routes, neigh, fdb) = device_state(&nl, i6);
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes.get(&net("fd00:10:244:2::/64")),
            Some(&Some(ip("fd00:10:244:2::")))
        );
        assert_eq!(
            neigh.get(&ip("fd00:10:244:2::")),
            Some(&mac6_of(peer_ip(52)))
        );
        assert_eq!(fdb.get(&mac6_of(peer_ip(52))), Some(&ip("fd00::34")));
        assert_eq!(device_state(&nl, i4).0.len(), 3, "the IPv4 overlay too");

        // A new lease and a deleted one: only their own entries, in both families, no dump.
        nl.take_calls();
        let new = dual_lease(9, 59);
        b.apply_delta(&own(), std::slice::from_ref(&new), &[leases[0].clone()])
            .await
            .expect("delta")
            .expect("incremental");
        let calls = nl.take_calls();
        assert!(dumps(&calls).is_empty(), "{calls:?}");
        assert!(calls.contains(&Call::WriteRoute(
            net("fd00:10:244:9::/64"),
            ip("fd00:10:244:9::"),
            i6,
            RouteWrite::Create
        )));
        assert!(calls.contains(&Call::DelRoute(
            net("fd00:10:244:1::/64"),
            ip("fd00:10:244:1::"),
            i6
        )));
        let (routes, _, fdb) = device_state(&nl, i6);
        assert!(routes.contains_key(&net("fd00:10:244:9::/64")));
        assert!(!routes.contains_key(&net("fd00:10:244:1::/64")));
        assert!(!fdb.contains_key(&mac6_of(peer_ip(51))));
        assert!(b.expected_change(&Change::RouteGone(net("fd00:10:244:1::/64"))));

        // A v6 route deleted by hand comes back from its notification alone.
        nl.with(|s| {
            s.routes
                .retain(|r| r.entry.dst != net("fd00:10:244:2::/64"))
        });
        nl.take_calls();
        let r = b
            .repair(&[Change::RouteGone(net("fd00:10:244:2::/64"))])
            .await
            .expect("repair")
            .expect("repaired");
        assert_eq!((r.added, r.failed), (1, 0));
        assert_eq!(
            nl.take_calls(),
            vec![Call::WriteRoute(
                net("fd00:10:244:2::/64"),
                ip("fd00:10:244:2::"),
                i6,
                RouteWrite::Create
            )]
        );

        // The v6 device deleted: the next pass recreates it with its MAC and its entries.
        nl.with(|s| s.links.remove(&i6));
        let all = vec![leases[1].clone(), leases[2].clone(), new];
        let r = b.reconcile(&own(), &all).await.expect("reconcile");
        assert!(r.device_recreated);
        let i6 = b.device_index(Family::V6);
        assert_eq!(nl.with(|s| s.links[&i6].mac), Some(MAC6));
        assert_eq!(device_state(&nl, i6).0.len(), 3);
    });
}

#[test]
fn a_peer_without_ipv6_data_is_reported_and_still_routed_in_ipv4() {
    block(async {
        let (nl, _) = dual_node();
        let mut b = backend(&nl).await;
        let mut l = dual_lease(4, 54);
        l.attrs.backend_v6_data = None;
        let r = b.reconcile(&own(), &[l]).await.expect("reconcile");
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].reason, "no BackendV6Data");
        assert_eq!(device_state(&nl, b.device_index(Family::V4)).0.len(), 1);
        assert!(device_state(&nl, b.device_index(Family::V6)).0.is_empty());
    });
}

#[test]
fn direct_routing_applies_to_ipv6_peers_on_our_segment() {
    block(async {
        let (nl, ext) = dual_node();
        let mut c = cfg();
        c.direct_routing = true;
        let mut b = VxlanBackend::register(nl.clone(), c, ext, nets())
            .await
            .expect("register");
        // fd00::33 (node 51) is on our segment; fd00::34 (node 52) behind a router.
        nl.with(|s| {
            s.route_get.insert(ip("fd00::33"), Some((ETH0, None, None)));
            s.route_get
                .insert(ip("fd00::34"), Some((ETH0, None, Some(ip("fd00::1")))));
        });
        let leases = vec![dual_lease(1, 51), dual_lease(2, 52)];
        b.reconcile(&own(), &leases).await.expect("reconcile");
        let eth0 = nl.with(|s| s.routes_on(ETH0));
        assert_eq!(
            eth0.get(&net("fd00:10:244:1::/64")),
            Some(&Some(ip("fd00::33")))
        );
        let (routes, _, _) = device_state(&nl, b.device_index(Family::V6));
        assert_eq!(
            routes.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            vec!["fd00:10:244:2::/64"]
        );
    });
}

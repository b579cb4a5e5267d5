//! The vxlan backend against the fake kernel: device adoption, MAC restore, reconcile order,
//! removal of only our own entries, DirectRouting, and the incremental paths (lease deltas,
//! repairs from notifications, failures falling back to a full pass). Runs as any user.

use crate::common::*;
use flannel_backend::vxlan::VxlanConfig;
use flannel_backend::vxlan::{VxlanBackend, VxlanNetworks};
use flannel_backend::{Backend, Repairs};
use flannel_core::{Lease, MacAddr};
use flannel_net::fake::{Call, FakeNetlink, ENOBUFS};
use flannel_net::monitor::Change;
use flannel_net::{Family, RouteWrite};
use std::collections::BTreeMap;
use std::net::IpAddr;

const OUR_MAC: MacAddr = MacAddr([0x0a, 0x58, 1, 2, 3, 4]);

fn cfg() -> VxlanConfig {
    VxlanConfig::from_backend(&serde_json::json!({"Type": "vxlan"})).expect("config")
}

async fn backend(nl: &FakeNetlink, cfg: VxlanConfig) -> VxlanBackend<FakeNetlink> {
    let (_, ext) = node_ext();
    VxlanBackend::register(nl.clone(), cfg, ext, v4_only(Some(OUR_MAC)))
        .await
        .expect("register")
}

fn v4_only(mac: Option<MacAddr>) -> VxlanNetworks {
    VxlanNetworks {
        v4: Some((network(), mac)),
        v6: None,
    }
}

fn node_ext() -> (FakeNetlink, flannel_backend::ExternalInterface) {
    node()
}

/// What upstream programs for these peers: per peer an onlink route via the subnet's network
/// address, a neighbour entry for it with the peer's VTEP MAC, an FDB entry to its public IP.
fn expected(leases: &[Lease]) -> DeviceState {
    let mut st = DeviceState::default();
    for l in leases {
        let gw = IpAddr::V4(l.subnet.network());
        let data = flannel_core::lease::VxlanData::from_value(
            &l.attrs
                .backend_data
                .as_ref()
                .expect("data")
                .value()
                .expect("json"),
        )
        .expect("vxlan data");
        st.0.insert(ipnet::IpNet::V4(l.subnet), Some(gw));
        st.1.insert(gw, data.vtep_mac);
        st.2.insert(data.vtep_mac, IpAddr::V4(l.attrs.public_ip));
    }
    st
}

fn peers(n: u8) -> Vec<Lease> {
    (1..=n).map(|i| vxlan_lease(i, peer_ip(50 + i))).collect()
}

#[test]
fn registration_creates_the_device_once_and_adopts_an_existing_one_with_its_mac() {
    block(async {
        let (nl, _) = node();
        let b = backend(&nl, cfg()).await;
        let link = nl.with(|s| s.links[&b.device_index(Family::V4)].clone());
        assert_eq!(link.name, "flannel.1");
        assert_eq!(link.mac, Some(OUR_MAC), "a new device takes the stored MAC");
        assert_eq!(link.mtu, 1450, "external MTU - 50");
        nl.take_calls();

        // A restart finds the device: kept, its MAC becomes ours (peers know it).
        let (_, ext) = node();
        let other = MacAddr([0x0a, 0x58, 9, 9, 9, 9]);
        let b2 = VxlanBackend::register(nl.clone(), cfg(), ext, v4_only(Some(other)))
            .await
            .expect("register");
        assert_eq!(b2.device_index(Family::V4), b.device_index(Family::V4));
        assert_eq!(b2.vtep_mac(Family::V4), Some(OUR_MAC));
        let calls = nl.take_calls();
        assert!(
            !calls.iter().any(|c| c.is_write()),
            "adopting wrote to the kernel: {calls:?}"
        );

        // A device with another VNI is not ours to keep: replaced.
        let mut cfg2 = cfg();
        cfg2.vni = 1;
        nl.with(|s| {
            let l = s
                .links
                .get_mut(&b.device_index(Family::V4))
                .expect("device");
            l.vxlan.as_mut().expect("vxlan info").vni = Some(7);
        });
        let (_, ext) = node();
        let b3 = VxlanBackend::register(nl.clone(), cfg2, ext, v4_only(Some(other)))
            .await
            .expect("register");
        let calls = nl.take_calls();
        assert!(calls.contains(&Call::DeleteLink(b.device_index(Family::V4))));
        assert!(calls.contains(&Call::CreateVxlan("flannel.1".into())));
        assert_eq!(b3.vtep_mac(Family::V4), Some(other));
    });
}

#[test]
fn a_full_pass_programs_peers_in_upstream_order_and_restores_the_device() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl, cfg()).await;
        let idx = b.device_index(Family::V4);
        let own = own_vxlan(OUR_MAC);
        let leases = peers(3);
        nl.take_calls();
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        assert_eq!(r.failed, 0);
        assert_eq!(
            r.repairs,
            Repairs::default(),
            "first writes are not repairs"
        );
        assert_eq!(device_state(&nl, idx), expected(&leases));
        // Our address, MTU and up.
        let link = nl.with(|s| s.links[&idx].clone());
        assert!(link.up);
        assert!(nl.with(|s| s.addrs.contains(&(idx, net("10.244.0.0/32")))));
        // Per peer: neighbour, then FDB, then the route that relies on them.
        let calls = nl.take_calls();
        let pos = |c: &Call| calls.iter().position(|x| x == c).expect("call made");
        let gw = ip("10.244.1.0");
        let mac = mac_of(peer_ip(51));
        assert!(
            pos(&Call::SetNeighbour(idx, gw, mac)) < pos(&Call::SetFdb(idx, mac, ip("10.0.0.51")))
        );
        assert!(
            pos(&Call::SetFdb(idx, mac, ip("10.0.0.51")))
                < pos(&Call::WriteRoute(
                    net("10.244.1.0/24"),
                    gw,
                    idx,
                    RouteWrite::Create
                ))
        );

        // MAC, MTU and state changed by hand go back on the next pass.
        nl.with(|s| {
            let l = s.links.get_mut(&idx).expect("device");
            l.mac = Some(MacAddr([2, 2, 2, 2, 2, 2]));
            l.mtu = 9000;
            l.up = false;
        });
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        let link = nl.with(|s| s.links[&idx].clone());
        assert_eq!((link.mac, link.mtu, link.up), (Some(OUR_MAC), 1450, true));
        assert_eq!(r.repairs.device, 1, "{:?}", r.repairs);

        // Entries that drifted are rewritten by the full pass and counted as repairs; a new
        // peer in the same pass is not one.
        let gw2 = ip("10.244.2.0");
        nl.with(|s| {
            s.routes.retain(|r| r.entry.dst != net("10.244.1.0/24"));
            s.neighbours.remove(&(idx, gw2));
            s.fdb.remove(&(idx, mac_of(peer_ip(53))));
            s.addrs.retain(|(i, _)| *i != idx);
        });
        let more = peers(4);
        let r = b.reconcile(&own, &more).await.expect("reconcile");
        assert_eq!(
            r.repairs,
            Repairs {
                route: 1,
                neighbour: 1,
                fdb: 1,
                address: 1,
                device: 0
            }
        );
        assert_eq!(device_state(&nl, idx), expected(&more));
        b.reconcile(&own, &leases).await.expect("reconcile");

        // A deleted device is recreated with our MAC and gets every entry back.
        nl.with(|s| s.links.remove(&idx));
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        assert!(r.device_recreated);
        assert_eq!(r.repairs.device, 1);
        let idx = b.device_index(Family::V4);
        assert_eq!(device_state(&nl, idx), expected(&leases));
        assert_eq!(nl.with(|s| s.links[&idx].mac), Some(OUR_MAC));
    });
}

#[test]
fn only_our_own_entries_are_removed_and_foreign_routes_are_not_taken_over() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl, cfg()).await;
        let idx = b.device_index(Family::V4);
        let own = own_vxlan(OUR_MAC);
        // Leftovers on our device (all ours), a stale route of ours elsewhere, and foreign
        // state: an ARP entry on eth0, a static route into the cluster network, an FDB entry
        // on another link.
        nl.with(|s| {
            s.neighbours
                .insert((idx, ip("10.244.9.0")), MacAddr([2, 0, 0, 0, 0, 9]));
            s.fdb
                .insert((idx, MacAddr([2, 0, 0, 0, 0, 9])), ip("10.0.0.59"));
            s.routes.push(flannel_net::fake::FakeRoute {
                entry: flannel_net::RouteEntry {
                    dst: net("10.244.9.0/24"),
                    gw: Some(ip("10.244.9.0")),
                    oif: Some(idx),
                    protocol: 252,
                    unicast: true,
                },
                metric: 0,
                onlink: true,
            });
            s.neighbours
                .insert((ETH0, ip("10.0.0.1")), MacAddr([2, 0, 0, 0, 0, 1]));
            s.add_foreign_route(net("10.244.2.0/24"), Some(ip("10.0.0.99")), ETH0, 4);
            let br = s.add_link("br0", 1500);
            s.fdb
                .insert((br, MacAddr([2, 0, 0, 0, 0, 7])), ip("10.0.0.77"));
        });
        let before_foreign = nl.with(|s| (s.routes_on(ETH0), s.fdb.clone(), s.neighbours.clone()));
        let leases = peers(3);
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        // Peer 2's subnet is routed by someone else: skipped, with a reason, not taken over.
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        let want: Vec<Lease> = leases
            .iter()
            .filter(|l| l.subnet != subnet(2))
            .cloned()
            .collect();
        assert_eq!(device_state(&nl, idx), expected(&want));
        let after = nl.with(|s| (s.routes_on(ETH0), s.fdb.clone(), s.neighbours.clone()));
        assert_eq!(after.0, before_foreign.0, "routes on eth0 changed");
        assert!(
            after.1.contains_key(&(4, MacAddr([2, 0, 0, 0, 0, 7]))),
            "a foreign FDB entry went"
        );
        assert_eq!(
            after.2.get(&(ETH0, ip("10.0.0.1"))),
            Some(&MacAddr([2, 0, 0, 0, 0, 1]))
        );
    });
}

#[test]
fn direct_routing_routes_peers_on_our_segment_through_eth0_and_others_through_vxlan() {
    block(async {
        let (nl, _) = node();
        let mut c = cfg();
        c.direct_routing = true;
        let mut b = backend(&nl, c).await;
        let idx = b.device_index(Family::V4);
        // 10.0.0.51 is on our segment; 192.168.7.2 is behind a router.
        nl.with(|s| {
            s.route_get
                .insert(ip("10.0.0.51"), Some((ETH0, None, None)));
            s.route_get
                .insert(ip("192.168.7.2"), Some((ETH0, None, Some(ip("10.0.0.1")))));
        });
        let leases = vec![
            vxlan_lease(1, peer_ip(51)),
            vxlan_lease(2, "192.168.7.2".parse().expect("ip")),
        ];
        b.reconcile(&own_vxlan(OUR_MAC), &leases)
            .await
            .expect("reconcile");
        let eth0 = nl.with(|s| s.routes_on(ETH0));
        assert_eq!(
            eth0.get(&net("10.244.1.0/24")),
            Some(&Some(ip("10.0.0.51")))
        );
        assert_eq!(device_state(&nl, idx), expected(&leases[1..]));
        // Without a mirror (DirectRouting), lease changes take a full pass.
        assert!(b
            .apply_delta(&own_vxlan(OUR_MAC), &[vxlan_lease(3, peer_ip(53))], &[])
            .await
            .expect("delta")
            .is_none());
    });
}

/// The state snapshot (what `flannelctl doctor` checks the kernel against) judges leases by
/// the last pass's guard even where there is no mirror (DirectRouting): a lease the pass
/// skipped for a foreign route is not listed as expected.
#[test]
fn the_snapshot_leaves_out_what_the_pass_skipped_even_without_a_mirror() {
    block(async {
        let (nl, _) = node();
        let mut c = cfg();
        c.direct_routing = true;
        let mut b = backend(&nl, c).await;
        nl.with(|s| s.add_foreign_route(net("10.244.2.0/24"), Some(ip("10.0.0.99")), ETH0, 4));
        let (own, leases) = (own_vxlan(OUR_MAC), peers(3));
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        let routes: Vec<String> = b
            .expected(&own, &leases)
            .iter()
            .filter_map(|e| match e {
                flannel_core::state::KernelEntry::Route { dst, .. } => Some(dst.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(routes, ["10.244.1.0/24", "10.244.3.0/24"]);
    });
}

#[test]
fn a_lease_event_issues_no_dump_only_requests_for_its_own_entries() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl, cfg()).await;
        let idx = b.device_index(Family::V4);
        let own = own_vxlan(OUR_MAC);
        let mut leases = peers(50);
        b.reconcile(&own, &leases).await.expect("reconcile");
        nl.take_calls();

        // Add.
        let new = vxlan_lease(77, peer_ip(177));
        let r = b
            .apply_delta(&own, std::slice::from_ref(&new), &[])
            .await
            .expect("delta");
        assert_eq!(r.map(|r| r.failed), Some(0));
        let gw = ip("10.244.77.0");
        let mac = mac_of(peer_ip(177));
        assert_eq!(
            nl.take_calls(),
            vec![
                Call::SetNeighbour(idx, gw, mac),
                Call::SetFdb(idx, mac, ip("10.0.0.177")),
                Call::WriteRoute(net("10.244.77.0/24"), gw, idx, RouteWrite::Create),
            ]
        );
        leases.push(new.clone());
        assert_eq!(device_state(&nl, idx), expected(&leases));

        // Update: the peer came back with a new VTEP MAC.
        let mac2 = MacAddr([0x0a, 0x58, 7, 7, 7, 7]);
        let upd = vxlan_lease_with_mac(77, peer_ip(177), mac2);
        b.apply_delta(&own, std::slice::from_ref(&upd), &[])
            .await
            .expect("delta");
        let calls = nl.take_calls();
        assert!(dumps(&calls).is_empty(), "{calls:?}");
        assert_eq!(
            calls,
            vec![
                Call::DelFdb(idx, mac, ip("10.0.0.177")),
                Call::SetNeighbour(idx, gw, mac2),
                Call::SetFdb(idx, mac2, ip("10.0.0.177")),
            ]
        );
        *leases.last_mut().expect("lease") = upd.clone();
        assert_eq!(device_state(&nl, idx), expected(&leases));

        // Delete: route first, then neighbour and FDB; their notifications are expected.
        b.apply_delta(&own, &[], std::slice::from_ref(&upd))
            .await
            .expect("delta");
        assert_eq!(
            nl.take_calls(),
            vec![
                Call::DelRoute(net("10.244.77.0/24"), gw, idx),
                Call::DelNeighbour(idx, gw),
                Call::DelFdb(idx, mac2, ip("10.0.0.177")),
            ]
        );
        leases.pop();
        assert_eq!(device_state(&nl, idx), expected(&leases));
        for c in [
            Change::RouteGone(net("10.244.77.0/24")),
            Change::NeighbourGone(idx, gw),
            Change::FdbGone(idx, mac2),
        ] {
            assert!(b.expected_change(&c), "{c:?} not expected");
            assert!(!b.expected_change(&c), "{c:?} expected twice");
        }
    });
}

#[test]
fn a_notification_about_a_deleted_entry_puts_back_that_entry_only() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl, cfg()).await;
        let idx = b.device_index(Family::V4);
        let own = own_vxlan(OUR_MAC);
        let leases = peers(20);
        b.reconcile(&own, &leases).await.expect("reconcile");
        // Someone deletes one peer's route, another's neighbour and a third's FDB entry.
        let (d, gw) = (net("10.244.3.0/24"), ip("10.244.3.0"));
        let mac5 = mac_of(peer_ip(55));
        nl.with(|s| {
            s.routes.retain(|r| r.entry.dst != d);
            s.neighbours.remove(&(idx, ip("10.244.4.0")));
            s.fdb.remove(&(idx, mac5));
        });
        nl.take_calls();
        let changes = [
            Change::RouteGone(d),
            Change::NeighbourGone(idx, ip("10.244.4.0")),
            Change::FdbGone(idx, mac5),
            // An ARP entry expiring on eth0 is not ours: ignored.
            Change::NeighbourGone(ETH0, ip("10.0.0.1")),
        ];
        let r = b.repair(&changes).await.expect("repair").expect("repaired");
        assert_eq!((r.added, r.failed), (3, 0));
        assert_eq!(
            (r.repairs.route, r.repairs.neighbour, r.repairs.fdb),
            (1, 1, 1)
        );
        let calls = nl.take_calls();
        assert!(dumps(&calls).is_empty(), "{calls:?}");
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls.contains(&Call::WriteRoute(d, gw, idx, RouteWrite::Create)));
        assert_eq!(device_state(&nl, idx), expected(&leases));
        // A foreign route gone may change what the guard allows: that takes a full pass.
        assert!(b
            .repair(&[Change::RouteGone(net("192.168.0.0/16"))])
            .await
            .expect("repair")
            .is_none());
    });
}

#[test]
fn an_overrun_takes_a_full_pass_that_finds_what_was_missed() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl, cfg()).await;
        let idx = b.device_index(Family::V4);
        let own = own_vxlan(OUR_MAC);
        let leases = peers(10);
        b.reconcile(&own, &leases).await.expect("reconcile");
        // Entries deleted while notifications were lost: the monitor says only `Other`.
        nl.with(|s| {
            s.routes.retain(|r| r.entry.oif != Some(idx));
            s.fdb.retain(|(i, _), _| *i != idx);
        });
        assert!(b.repair(&[Change::Other]).await.expect("repair").is_none());
        nl.take_calls();
        let r = b.reconcile(&own, &leases).await.expect("reconcile");
        assert_eq!(r.added, 20);
        let calls = nl.take_calls();
        assert!(calls.contains(&Call::ListRoutes(Family::V4)));
        assert!(calls.contains(&Call::ListFdb(idx)));
        assert_eq!(device_state(&nl, idx), expected(&leases));
    });
}

#[test]
fn a_failed_incremental_write_drops_the_mirror_until_a_full_pass_succeeds() {
    block(async {
        let (nl, _) = node();
        let mut b = backend(&nl, cfg()).await;
        let idx = b.device_index(Family::V4);
        let own = own_vxlan(OUR_MAC);
        let mut leases = peers(5);
        b.reconcile(&own, &leases).await.expect("reconcile");
        nl.fail(|c| matches!(c, Call::SetFdb(..)), ENOBUFS, 1);
        let new = vxlan_lease(8, peer_ip(58));
        let r = b
            .apply_delta(&own, std::slice::from_ref(&new), &[])
            .await
            .expect("delta")
            .expect("report");
        assert_eq!(r.failed, 1);
        leases.push(new);
        // The backend no longer trusts its mirror: the next event asks for a full pass.
        let next = vxlan_lease(9, peer_ip(59));
        assert!(b
            .apply_delta(&own, std::slice::from_ref(&next), &[])
            .await
            .expect("delta")
            .is_none());
        leases.push(next);
        b.reconcile(&own, &leases).await.expect("reconcile");
        assert_eq!(device_state(&nl, idx), expected(&leases));
        // And after it, events are incremental again.
        let r = b
            .apply_delta(&own, &[], &[leases[0].clone()])
            .await
            .expect("delta");
        assert_eq!(r.map(|r| r.failed), Some(0));
        assert_eq!(device_state(&nl, idx), expected(&leases[1..]));
    });
}

/// A full pass as the daemon runs it: again while a write fails (at most one failure is
/// injected at a time). Whether it succeeded.
async fn full_pass(b: &mut VxlanBackend<FakeNetlink>, own: &Lease, all: &[Lease]) -> bool {
    for _ in 0..3 {
        if b.reconcile(own, all).await.expect("full pass").failed == 0 {
            return true;
        }
    }
    false
}

/// Random lease events, each applied the way the daemon applies it (incrementally, a full
/// pass when the backend asks for one), with drift injected between them: our entries
/// deleted (notified or not), junk left on our device, a foreign writer's entries around.
/// After the safety-net pass the kernel holds exactly the desired entries, and the foreign
/// ones are untouched.
#[test]
fn random_lease_events_with_drift_end_with_exactly_the_desired_entries() {
    for seed in 1..=20u64 {
        block(run_random(seed));
    }
}

async fn run_random(seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let (nl, _) = node();
    let mut b = backend(&nl, cfg()).await;
    let idx = b.device_index(Family::V4);
    let own = own_vxlan(OUR_MAC);
    nl.with(|s| {
        s.neighbours
            .insert((ETH0, ip("10.0.0.1")), MacAddr([2, 0, 0, 0, 0, 1]));
        s.add_foreign_route(net("192.168.0.0/16"), Some(ip("10.0.0.1")), ETH0, 4);
        let br = s.add_link("br0", 1500);
        s.fdb
            .insert((br, MacAddr([2, 0, 0, 0, 0, 7])), ip("10.0.0.77"));
    });
    let foreign = |nl: &FakeNetlink| {
        nl.with(|s| {
            (
                s.routes_on(ETH0),
                s.neighbours
                    .iter()
                    .filter(|((i, _), _)| *i != idx)
                    .map(|(k, v)| (*k, *v))
                    .collect::<Vec<_>>(),
                s.fdb
                    .iter()
                    .filter(|((i, _), _)| *i != idx)
                    .map(|(k, v)| (*k, *v))
                    .collect::<Vec<_>>(),
            )
        })
    };
    let foreign_before = foreign(&nl);
    let mut leases: BTreeMap<u8, Lease> = BTreeMap::new();
    b.reconcile(&own, &[]).await.expect("first pass");
    // Drift no notification told us about is outstanding: only a full pass finds it.
    let mut unnotified = false;
    for step in 0..300 {
        // A burst of 1-3 lease events.
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for _ in 0..=rnd(3) {
            let i = 1 + rnd(30) as u8;
            if rnd(3) == 0 {
                if let Some(old) = leases.remove(&i) {
                    changed.retain(|l: &Lease| l.subnet != old.subnet);
                    removed.push(old);
                }
            } else {
                // Public IPs from a small pool: some peers share a node (and a MAC).
                let l = vxlan_lease(i, peer_ip(100 + rnd(12) as u8));
                removed.retain(|o: &Lease| o.subnet != l.subnet);
                leases.insert(i, l.clone());
                changed.retain(|o: &Lease| o.subnet != l.subnet);
                changed.push(l);
            }
        }
        let all: Vec<Lease> = leases.values().cloned().collect();
        match b
            .apply_delta(&own, &changed, &removed)
            .await
            .expect("delta")
        {
            Some(r) if r.failed == 0 => {}
            _ => unnotified &= !full_pass(&mut b, &own, &all).await,
        }
        // Drift.
        match rnd(6) {
            0 => {
                // One of our routes deleted by hand, notification delivered.
                let gone = nl.with(|s| {
                    let at = s.routes.iter().position(|r| r.entry.oif == Some(idx))?;
                    Some(s.routes.remove(at).entry.dst)
                });
                if let Some(d) = gone {
                    match b.repair(&[Change::RouteGone(d)]).await.expect("repair") {
                        Some(r) if r.failed == 0 => {}
                        _ => unnotified &= !full_pass(&mut b, &own, &all).await,
                    }
                }
            }
            1 => {
                // An FDB entry deleted while notifications were lost.
                unnotified |= nl.with(|s| {
                    let k = s.fdb.keys().find(|(i, _)| *i == idx).copied();
                    k.and_then(|k| s.fdb.remove(&k)).is_some()
                });
            }
            2 => {
                // Junk on our device.
                nl.with(|s| {
                    s.neighbours
                        .insert((idx, ip("10.244.200.0")), MacAddr([2, 0, 0, 0, 0, 0xee]));
                });
                unnotified = true;
            }
            3 => {
                // A failure injected into whatever comes next.
                nl.fail(|c| c.is_write(), ENOBUFS, 1);
            }
            _ => {}
        }
        if rnd(10) == 0 {
            // The safety-net timer.
            unnotified &= !full_pass(&mut b, &own, &all).await;
        }
        if !unnotified {
            // Every event and every notified deletion is handled as it comes.
            assert_eq!(
                device_state(&nl, idx),
                expected(&all),
                "seed {seed} step {step}"
            );
        }
    }
    let all: Vec<Lease> = leases.values().cloned().collect();
    // At most one pass can have failed on an injected error; the next one heals.
    b.reconcile(&own, &all).await.expect("final pass");
    let r = b.reconcile(&own, &all).await.expect("final pass");
    assert_eq!(r.failed, 0);
    assert_eq!(device_state(&nl, idx), expected(&all), "seed {seed}");
    assert_eq!(
        foreign(&nl),
        foreign_before,
        "seed {seed}: foreign entries changed"
    );
}

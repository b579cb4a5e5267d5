//! The daemon's event handling on fakes of all three of its worlds, as any user: the datastore
//! (`flannel_subnet::fake`), the kernel (`flannel_net::fake`, under the real host-gw backend)
//! and the firewall (`flannel_net::fake_firewall`). Each test hands the daemon what a trigger
//! would (lease events, a kernel notification, the resync timer, the renewal deadline) and
//! checks what a user would: routes, rules, the lease in the datastore, the counters.

use super::*;
use crate::drift::{ClaimWatch, ConfigDrift};
use crate::skiplog::{ConflictLog, SkipLog};
use flannel_backend::hostgw::HostGwBackend;
use flannel_backend::ExternalInterface;
use flannel_core::{LeaseAttrs, NetworkConfig};
use flannel_net::fake::{Call, FakeNetlink};
use flannel_net::fake_firewall::FakeFirewall;
use flannel_subnet::fake::{FakeSubnetManager, SmCall};
use flannel_subnet::Claim;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};

const CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const ETH0: u32 = 2;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

type TestDaemon = Daemon<FakeSubnetManager, FakeNetlink, HostGwBackend<FakeNetlink>>;

struct World {
    d: TestDaemon,
    nl: FakeNetlink,
    sm: FakeSubnetManager,
    fw: FakeFirewall,
}

use flannel_testkit::net;

/// A host-gw lease of subnet 10.244.`i`.0/24 held by the node at 10.0.0.`host`.
fn lease(i: u8, host: u8) -> Lease {
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("subnet");
    Lease::v4(
        subnet,
        LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 0, 0, host),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        },
    )
}

fn claim(i: u8, host: u8) -> Claim {
    Claim::new(
        Owner::new(&format!("10.244.{i}.0-24")),
        lease(i, host),
        i64::from(i),
    )
}

/// The route to `dst` through eth0, as the kernel holds it: its gateway and whether it is ours.
fn route(nl: &FakeNetlink, dst: &str) -> Option<(Option<IpAddr>, bool)> {
    nl.with(|s| {
        s.routes
            .iter()
            .find(|r| r.entry.dst == net(dst) && r.entry.oif == Some(ETH0))
            .map(|r| (r.entry.gw, r.entry.ours()))
    })
}

fn gw(host: u8) -> Option<(Option<IpAddr>, bool)> {
    Some((Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))), true))
}

/// A node (eth0 10.0.0.50/24) running flanneld with `flags`, its lease 10.244.0.0/24 taken,
/// its rules installed and one full pass done, as startup leaves it.
async fn world(flags: &[&str]) -> World {
    let nl = FakeNetlink::node(net("10.0.0.50/24"));
    let ext = ExternalInterface::v4(ETH0, "eth0", 1500, NODE_IP);
    let sm = FakeSubnetManager::new(CONFIG, "10.244.0.0-24", lease(0, 50));
    let config = NetworkConfig::parse_and_check(CONFIG).expect("config");
    let backend =
        HostGwBackend::register(nl.clone(), ext, &[net("10.244.0.0/16")]).expect("register");
    let own = sm
        .acquire_lease(&config, &backend.lease_attrs())
        .await
        .expect("lease");
    let fw = FakeFirewall::new([
        ("nat", "masquerade 10.244.0.0/16"),
        ("filter", "forward 10.244.0.0/16"),
    ]);
    fw.setup().expect("rules");
    let args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let opts = match flannel_cli::flags::parse(&args, &|_| None).expect("flags") {
        flannel_cli::flags::Parsed::Values(v) => {
            Options::from_values(&v, &|_| None).expect("options")
        }
        flannel_cli::flags::Parsed::Help => unreachable!("no --help given"),
    };
    let leases = LeaseSet::with_own(
        own.owner.clone(),
        own.lease.key(),
        vec![net("10.244.0.0/16")],
    );
    let mut d = Daemon {
        sm: Arc::new(sm.clone()),
        nl: nl.clone(),
        opts,
        backend,
        fw: Arc::new(fw.clone()),
        renew_at: renew_deadline(&own, Duration::from_secs(3600)),
        own,
        leases,
        last_report: Default::default(),
        metrics: crate::metrics::Metrics::new(),
        state_requests: None,
        node: Default::default(),
        config_json: serde_json::Value::Null,
        skips: SkipLog::default(),
        conflicts: ConflictLog::default(),
        drift: ConfigDrift::new(config),
        claims: ClaimWatch::default(),
        families: vec![Family::V4],
    };
    d.on_lease_events(vec![LeaseEvent::Snapshot(
        sm.list_leases().await.expect("list"),
    )])
    .await
    .expect("first listing");
    nl.take_calls();
    sm.take_calls();
    fw.take_calls();
    World { d, nl, sm, fw }
}

fn dumps(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.is_dump()).collect()
}

#[tokio::test]
async fn a_peer_lease_becomes_a_route_without_reading_the_kernel_back() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 51))])
        .await
        .unwrap();
    assert_eq!(route(&w.nl, "10.244.1.0/24"), gw(51));
    let calls = w.nl.take_calls();
    assert!(
        dumps(&calls).is_empty(),
        "the delta path reads nothing back: {calls:?}"
    );
    // Moved to another host: the same route, new gateway.
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 61))])
        .await
        .unwrap();
    assert_eq!(route(&w.nl, "10.244.1.0/24"), gw(61));
    assert_eq!(
        w.d.metrics.lease_events.get(),
        3,
        "the listing and two events"
    );
}

#[tokio::test]
async fn a_removed_peer_takes_its_route_along_and_others_stay() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![
        LeaseEvent::Added(claim(1, 51)),
        LeaseEvent::Added(claim(2, 52)),
    ])
    .await
    .unwrap();
    w.d.on_lease_events(vec![LeaseEvent::Removed(claim(1, 51).owner)])
        .await
        .unwrap();
    assert_eq!(route(&w.nl, "10.244.1.0/24"), None);
    assert_eq!(route(&w.nl, "10.244.2.0/24"), gw(52));
    assert_eq!(w.d.snapshot().leases.len(), 2, "ours and 10.244.2.0/24");
}

#[tokio::test]
async fn a_listing_takes_a_full_pass_that_removes_what_no_lease_asks_for() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 51))])
        .await
        .unwrap();
    let own = w.sm.with(|s| s.claims.clone());
    let listing: Vec<Claim> = own
        .into_iter()
        .map(|(o, l)| Claim::new(o, l, 0))
        .chain([claim(3, 53)])
        .collect();
    w.nl.take_calls();
    w.d.on_lease_events(vec![LeaseEvent::Snapshot(listing)])
        .await
        .unwrap();
    assert_eq!(route(&w.nl, "10.244.1.0/24"), None, "gone from the listing");
    assert_eq!(route(&w.nl, "10.244.3.0/24"), gw(53));
    assert!(
        !dumps(&w.nl.take_calls()).is_empty(),
        "a listing reads the kernel"
    );
}

#[tokio::test]
async fn our_lease_deleted_behind_our_back_is_taken_back() {
    let mut w = world(&[]).await;
    let ours = w.d.own.owner.clone();
    w.sm.with(|s| s.claims.remove(&ours));
    w.d.on_lease_events(vec![LeaseEvent::Removed(ours.clone())])
        .await
        .unwrap();
    assert_eq!(w.sm.take_calls(), [SmCall::Reclaim]);
    assert!(
        w.sm.with(|s| s.claims.contains_key(&ours)),
        "the datastore holds it again"
    );
    assert_eq!(w.d.metrics.reclaims.get(), 1);
}

#[tokio::test]
async fn our_subnet_taken_by_another_node_stops_the_daemon_with_the_reason() {
    let mut w = world(&[]).await;
    let ours = w.d.own.owner.clone();
    w.sm.with(|s| s.taken = true);
    let e =
        w.d.on_lease_events(vec![LeaseEvent::Removed(ours)])
            .await
            .unwrap_err();
    assert!(e.to_string().contains("restart to get a new subnet"), "{e}");
}

#[tokio::test]
async fn a_claim_overlapping_ours_is_skipped_and_routes_stay() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 51))])
        .await
        .unwrap();
    // Another writer claims our subnet under another key.
    let thief = Claim::new(Owner::new("10.244.0.0-24-thief"), lease(0, 99), 99);
    w.d.on_lease_events(vec![LeaseEvent::Added(thief)])
        .await
        .unwrap();
    assert_eq!(
        route(&w.nl, "10.244.1.0/24"),
        gw(51),
        "the peer's route stays"
    );
    assert_eq!(
        route(&w.nl, "10.244.0.0/24"),
        None,
        "no route to our own subnet"
    );
    assert_eq!(w.d.state().conflicts.len(), 1, "the conflict is reported");
}

#[tokio::test]
async fn a_route_deleted_by_hand_is_put_back_without_a_full_pass() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 51))])
        .await
        .unwrap();
    w.nl.with(|s| s.routes.retain(|r| r.entry.dst != net("10.244.1.0/24")));
    w.nl.take_calls();
    w.d.on_netlink_kick(&[Change::RouteGone(net("10.244.1.0/24"))])
        .await;
    assert_eq!(route(&w.nl, "10.244.1.0/24"), gw(51));
    assert!(
        dumps(&w.nl.take_calls()).is_empty(),
        "a repair reads nothing back"
    );
}

#[tokio::test]
async fn a_flush_of_more_than_the_repair_cap_takes_a_full_pass() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 51))])
        .await
        .unwrap();
    w.nl.with(|s| s.routes.retain(|r| r.entry.dst != net("10.244.1.0/24")));
    w.nl.take_calls();
    let flush: Vec<Change> = (0..=MAX_REPAIRS as u32)
        .map(|i| {
            Change::RouteGone(IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24).unwrap(),
            ))
        })
        .collect();
    w.d.on_netlink_kick(&flush).await;
    assert_eq!(route(&w.nl, "10.244.1.0/24"), gw(51));
    assert!(
        !dumps(&w.nl.take_calls()).is_empty(),
        "a full pass reads the kernel"
    );
}

#[tokio::test]
async fn the_resync_puts_back_rules_and_the_blackhole_route() {
    let mut w = world(&["--ip-blackhole-route"]).await;
    w.fw.with(|s| s.tables.get_mut("filter").expect("filter table").clear());
    w.d.on_resync().await;
    assert!(w
        .fw
        .with(|s| s.tables["filter"].contains("forward 10.244.0.0/16")));
    let repaired = w.d.metrics.repairs.get_or_create(&[("kind", "rule")]).get();
    assert_eq!(repaired, 1);
    let blackhole = w.nl.with(|s| {
        s.routes
            .iter()
            .any(|r| r.entry.dst == net("10.244.0.0/24") && !r.entry.unicast)
    });
    assert!(blackhole, "--ip-blackhole-route adds it");
    // A second tick finds everything in place.
    w.d.on_resync().await;
    assert_eq!(
        w.d.metrics.repairs.get_or_create(&[("kind", "rule")]).get(),
        1
    );
    // A broken firewall is counted, not fatal.
    w.fw.with(|s| s.broken = true);
    w.d.on_resync().await;
    assert_eq!(w.d.metrics.firewall_errors.get(), 1);
}

#[tokio::test]
async fn a_renewal_of_a_lease_gone_from_the_datastore_takes_it_back() {
    let mut w = world(&[]).await;
    let ours = w.d.own.owner.clone();
    w.sm.with(|s| s.claims.remove(&ours));
    let before = w.d.renew_at;
    w.d.on_renew().await;
    assert_eq!(w.sm.take_calls(), [SmCall::Renew, SmCall::Reclaim]);
    assert!(w.d.renew_at > before, "the next renewal is scheduled");
    assert_eq!(w.d.metrics.renewal_failures.get(), 1);
    // Renewed normally the next time.
    w.d.on_renew().await;
    assert_eq!(w.sm.take_calls(), [SmCall::Renew]);
    assert_eq!(w.d.metrics.renewals.get(), 1);
}

#[tokio::test]
async fn the_state_snapshot_shows_leases_and_what_the_kernel_should_hold() {
    let mut w = world(&[]).await;
    w.d.on_lease_events(vec![LeaseEvent::Added(claim(1, 51))])
        .await
        .unwrap();
    let s = w.d.state();
    assert_eq!(s.own.subnet, Some(net("10.244.0.0/24")));
    assert_eq!(s.leases.len(), 2);
    assert!(s
        .expected
        .iter()
        .any(|e| matches!(e, flannel_core::state::KernelEntry::Route { dst, .. } if *dst == net("10.244.1.0/24"))));
}

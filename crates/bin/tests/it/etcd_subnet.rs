//! The etcd subnet manager against a real etcd: acquire, renew, reuse after restart, lost race,
//! upstream's exact key and value formats, garbage skipped, out of subnets.

use crate::common;

use common::{unique, Etcd};
use etcd_client::{Client, GetOptions};
use flannel_core::subnet_env::PreviousSubnets;
use flannel_core::{LeaseAttrs, NetworkConfig};
use flannel_subnet::etcd::{EtcdOptions, EtcdSubnetManager, Listing, SUBNET_TTL_SECS};
use flannel_subnet::{LeaseEvent, SubnetError, SubnetManager};
use std::net::Ipv4Addr;
use std::time::Duration;

struct Fixture {
    _etcd: Etcd,
    prefix: String,
    client: Client,
    opts: EtcdOptions,
}

async fn fixture(config: &str) -> Fixture {
    let etcd = Etcd::start();
    let prefix = format!("/{}/coreos.com/network", unique("t"));
    let mut client = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("connect");
    client
        .put(format!("{prefix}/config"), config, None)
        .await
        .expect("put config");
    let opts = EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: prefix.clone(),
        ..Default::default()
    };
    Fixture {
        _etcd: etcd,
        prefix,
        client,
        opts,
    }
}

impl Fixture {
    async fn manager(&self, prev: PreviousSubnets) -> EtcdSubnetManager {
        EtcdSubnetManager::connect(&self.opts, prev)
            .await
            .expect("manager")
    }
    async fn raw(&mut self, key: &str) -> Option<(String, i64)> {
        let r = self
            .client
            .get(format!("{}/{key}", self.prefix), None)
            .await
            .expect("get");
        r.kvs()
            .first()
            .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
    }
    async fn put(&mut self, key: &str, value: &str) {
        self.client
            .put(format!("{}/{key}", self.prefix), value, None)
            .await
            .expect("put");
    }
    async fn subnet_keys(&mut self) -> Vec<String> {
        let r = self
            .client
            .get(
                format!("{}/subnets/", self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .expect("list");
        r.kvs()
            .iter()
            .map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }
}

const TUTORIAL: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;

fn attrs(ip: &str, mac: &str) -> LeaseAttrs {
    LeaseAttrs::v4(
        ip.parse().unwrap(),
        "vxlan",
        Some(serde_json::json!({"VNI": 1, "VtepMAC": mac})),
    )
}

fn cfg(text: &str) -> NetworkConfig {
    NetworkConfig::parse_and_check(text).unwrap()
}

#[tokio::test]
async fn acquire_writes_upstreams_exact_key_value_and_ttl() {
    let mut f = fixture(TUTORIAL).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    assert_eq!(
        sm.get_network_config().await.unwrap().as_deref(),
        Some(TUTORIAL)
    );
    let own = sm
        .acquire_lease(&cfg(TUTORIAL), &attrs("10.0.0.50", "02:00:00:00:00:50"))
        .await
        .unwrap();
    let s = own.lease.subnet;
    assert_eq!(s.prefix_len(), 24);
    assert!(
        s.network() >= Ipv4Addr::new(10, 244, 1, 0)
            && s.network() <= Ipv4Addr::new(10, 244, 255, 0)
    );
    let key = format!("subnets/{}-24", s.network());
    let (value, lease) = f.raw(&key).await.expect("lease key exists");
    assert_eq!(
        value,
        r#"{"PublicIP":"10.0.0.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:50"}}"#
    );
    assert_ne!(lease, 0, "the key hangs on an etcd lease");
    let ttl = f
        .client
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert!(
        ttl > SUBNET_TTL_SECS - 60 && ttl <= SUBNET_TTL_SECS,
        "24 h TTL, got {ttl}"
    );
    assert_eq!(own.ttl, Duration::from_secs(SUBNET_TTL_SECS as u64));
}

#[tokio::test]
async fn renew_moves_the_key_to_a_fresh_lease_and_fails_when_the_key_is_gone() {
    let mut f = fixture(TUTORIAL).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let own = sm
        .acquire_lease(&cfg(TUTORIAL), &attrs("10.0.0.51", "02:00:00:00:00:51"))
        .await
        .unwrap();
    let key = format!("subnets/{}-24", own.lease.subnet.network());
    let (_, before) = f.raw(&key).await.unwrap();
    let renewed = sm.renew_lease(&own).await.unwrap();
    let (value, after) = f.raw(&key).await.unwrap();
    assert_ne!(
        before, after,
        "renewal uses a new etcd lease, like upstream"
    );
    assert_eq!(renewed.handle().etcd_lease_id(), after);
    assert_eq!(value, own.lease.attrs.to_json());
    f.client
        .delete(format!("{}/{key}", f.prefix), None)
        .await
        .unwrap();
    match sm.renew_lease(&renewed).await {
        Err(SubnetError::LeaseLost { key: k }) => assert!(k.ends_with(&key)),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // ... and reclaim takes the same subnet back while it is free.
    let back = sm.reclaim(&renewed).await.unwrap();
    assert_eq!(back.lease.subnet, own.lease.subnet);
    assert!(f.raw(&key).await.is_some());
}

#[tokio::test]
async fn restart_reuses_the_subnet_by_public_ip_then_by_previous_subnet() {
    let mut f = fixture(TUTORIAL).await;
    let c = cfg(TUTORIAL);
    let first = f
        .manager(PreviousSubnets::default())
        .await
        .acquire_lease(&c, &attrs("10.0.0.52", "02:00:00:00:00:01"))
        .await
        .unwrap();
    // A restart with a new MAC: same subnet (found by PublicIP), value updated.
    let again = f
        .manager(PreviousSubnets::default())
        .await
        .acquire_lease(&c, &attrs("10.0.0.52", "02:00:00:00:00:02"))
        .await
        .unwrap();
    assert_eq!(again.lease.subnet, first.lease.subnet);
    assert_eq!(f.subnet_keys().await.len(), 1, "no second lease");
    let key = format!("subnets/{}-24", first.lease.subnet.network());
    assert!(f.raw(&key).await.unwrap().0.contains("02:00:00:00:00:02"));

    // The key expired meanwhile (deleted here): the subnet from subnet.env is taken back.
    f.client
        .delete(format!("{}/{key}", f.prefix), None)
        .await
        .unwrap();
    let prev = PreviousSubnets {
        subnet: Some(first.lease.subnet),
        ..Default::default()
    };
    let third = f
        .manager(prev)
        .await
        .acquire_lease(&c, &attrs("10.0.0.99", "02:00:00:00:00:03"))
        .await
        .unwrap();
    assert_eq!(third.lease.subnet, first.lease.subnet);

    // A previous subnet that another node holds now is not taken.
    let prev = PreviousSubnets {
        subnet: Some(first.lease.subnet),
        ..Default::default()
    };
    let fourth = f
        .manager(prev)
        .await
        .acquire_lease(&c, &attrs("10.0.0.98", "02:00:00:00:00:04"))
        .await
        .unwrap();
    assert_ne!(fourth.lease.subnet, first.lease.subnet);
}

#[tokio::test]
async fn a_lost_race_tries_another_subnet() {
    let mut f = fixture(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0","Backend":{"Type":"vxlan"}}"#).await;
    let c = cfg(
        r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0","Backend":{"Type":"vxlan"}}"#,
    );
    let sm = f.manager(PreviousSubnets::default()).await;
    // Our (stale) view: 10.5.2.0 is taken, so 10.5.1.0 looks free...
    let mut stale: Listing = sm.list().await.unwrap();
    stale.entries.push(flannel_subnet::etcd::Entry {
        key: "stale".into(),
        lease: flannel_core::Lease {
            subnet: "10.5.2.0/24".parse().unwrap(),
            ipv6_subnet: None,
            attrs: attrs("10.0.0.70", "02:00:00:00:00:70"),
        },
        etcd_lease: 1,
        mod_revision: 1,
        create_revision: 1,
    });
    // ...but another node wins 10.5.1.0 before our transaction.
    f.put(
        "subnets/10.5.1.0-24",
        r#"{"PublicIP":"10.0.0.71","PublicIPv6":null}"#,
    )
    .await;
    let own = sm
        .acquire_from(&c, &attrs("10.0.0.72", "02:00:00:00:00:72"), Some(stale))
        .await
        .unwrap();
    assert_eq!(
        own.lease.subnet.to_string(),
        "10.5.2.0/24",
        "lost the race for 10.5.1.0, took the other"
    );
    assert_eq!(
        f.raw("subnets/10.5.1.0-24").await.unwrap().0,
        r#"{"PublicIP":"10.0.0.71","PublicIPv6":null}"#,
        "winner untouched"
    );
    // Now the range is full.
    let err = sm
        .acquire_lease(&c, &attrs("10.0.0.73", "02:00:00:00:00:73"))
        .await
        .unwrap_err();
    assert!(matches!(err, SubnetError::OutOfSubnets), "{err}");
    assert!(err.to_string().contains("out of subnets"));
}

#[tokio::test]
async fn upstream_leases_are_understood_and_garbage_is_skipped() {
    let mut f = fixture(TUTORIAL).await;
    // Exactly as upstream writes them (spec §3.1), plus a dual-stack key and junk.
    f.put("subnets/10.244.7.0-24", r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#).await;
    f.put("subnets/10.244.8.0-24&fd00:12:13::-56", r#"{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#).await;
    f.put("subnets/not-a-subnet", r#"{"PublicIP":"1.2.3.4"}"#)
        .await;
    f.put("subnets/10.244.9.0-24", "{garbage").await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let l = sm.list().await.unwrap();
    let subnets: Vec<String> = l
        .entries
        .iter()
        .map(|e| e.lease.subnet.to_string())
        .collect();
    assert_eq!(subnets, ["10.244.7.0/24", "10.244.8.0/24"]);
    assert_eq!(
        l.entries[1].lease.ipv6_subnet.unwrap().to_string(),
        "fd00:12:13::/56"
    );
    assert_eq!(
        l.entries[0].lease.attrs.to_json(),
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
    );
    // The unreadable lease is not routed to, but its subnet is never handed out or overwritten.
    assert_eq!(
        l.unreadable
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        ["10.244.9.0-24"]
    );
    let own = sm
        .acquire_lease(&cfg(TUTORIAL), &attrs("10.0.0.60", "02:00:00:00:00:60"))
        .await
        .unwrap();
    assert!(!["10.244.7.0/24", "10.244.8.0/24"].contains(&own.lease.subnet.to_string().as_str()));
    assert_eq!(f.raw("subnets/10.244.9.0-24").await.unwrap().0, "{garbage");
}

#[tokio::test]
async fn watch_sends_a_snapshot_then_adds_and_removes() {
    let mut f = fixture(TUTORIAL).await;
    f.put("subnets/10.244.7.0-24", r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move { sm.watch_leases(tx).await });
    match recv(&mut rx).await {
        LeaseEvent::Snapshot(l) => assert_eq!(l.len(), 1),
        e => panic!("expected snapshot, got {e:?}"),
    }
    f.put("subnets/10.244.8.0-24", r#"{"PublicIP":"192.168.64.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#).await;
    match recv(&mut rx).await {
        LeaseEvent::Added(l) => assert_eq!(l.lease.subnet.to_string(), "10.244.8.0/24"),
        e => panic!("expected added, got {e:?}"),
    }
    f.put("subnets/bogus", "x").await; // skipped: no event
    f.client
        .delete(format!("{}/subnets/10.244.7.0-24", f.prefix), None)
        .await
        .unwrap();
    match recv(&mut rx).await {
        LeaseEvent::Removed(k) => assert_eq!(k.to_string(), "10.244.7.0-24"),
        e => panic!("expected removed, got {e:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn a_watch_resuming_at_a_compacted_revision_relists() {
    let mut f = fixture(TUTORIAL).await;
    f.put("subnets/10.244.7.0-24", r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let stale_rev = sm.list().await.unwrap().revision;
    f.put("subnets/10.244.8.0-24", r#"{"PublicIP":"192.168.64.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#).await;
    f.client
        .delete(format!("{}/subnets/10.244.7.0-24", f.prefix), None)
        .await
        .unwrap();
    let now = f
        .client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    f.client.compact(now, None).await.unwrap();
    // As after a reconnect: resume where we were. That history is gone, so the watch must
    // re-list and deliver the current set (7 removed, 8 added) as a snapshot.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move { sm.run_watch_from(tx, Some(stale_rev + 1)).await });
    match recv(&mut rx).await {
        LeaseEvent::Snapshot(l) => {
            let s: Vec<String> = l.iter().map(|x| x.lease.subnet.to_string()).collect();
            assert_eq!(s, ["10.244.8.0/24"]);
        }
        e => panic!("expected a snapshot after compaction, got {e:?}"),
    }
    f.put("subnets/10.244.9.0-24", r#"{"PublicIP":"192.168.64.5","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#).await;
    assert!(
        matches!(recv(&mut rx).await, LeaseEvent::Added(l) if l.lease.subnet.to_string() == "10.244.9.0/24")
    );
    task.abort();
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<LeaseEvent>) -> LeaseEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event within 5 s")
        .expect("channel open")
}

#[tokio::test]
async fn reservations_are_never_handed_out_and_keep_no_ttl_for_their_owner() {
    const SMALL: &str = r#"{"Network":"10.6.0.0/16","SubnetMin":"10.6.1.0","SubnetMax":"10.6.2.0","Backend":{"Type":"vxlan"}}"#;
    let mut f = fixture(SMALL).await;
    // A reservation: a key without TTL, for the node 10.0.0.5 (Documentation/reservations.md).
    f.put(
        "subnets/10.6.1.0-24",
        r#"{"PublicIP":"10.0.0.5","PublicIPv6":null}"#,
    )
    .await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let c = cfg(SMALL);
    let other = sm
        .acquire_lease(&c, &attrs("10.0.0.6", "02:00:00:00:00:06"))
        .await
        .unwrap();
    assert_eq!(
        other.lease.subnet.to_string(),
        "10.6.2.0/24",
        "the reserved subnet is not handed out"
    );
    let err = sm
        .acquire_lease(&c, &attrs("10.0.0.7", "02:00:00:00:00:07"))
        .await
        .unwrap_err();
    assert!(matches!(err, SubnetError::OutOfSubnets));
    let owner = sm
        .acquire_lease(&c, &attrs("10.0.0.5", "02:00:00:00:00:05"))
        .await
        .unwrap();
    assert_eq!(owner.lease.subnet.to_string(), "10.6.1.0/24");
    let (value, lease) = f.raw("subnets/10.6.1.0-24").await.unwrap();
    assert_eq!(lease, 0, "still a reservation: no TTL");
    assert!(value.contains("02:00:00:00:00:05"), "{value}");
    assert_eq!(
        sm.renew_lease(&owner).await.unwrap(),
        owner,
        "nothing to renew"
    );
}

#[tokio::test]
async fn a_listing_larger_than_one_grpc_message_is_read_whole_at_one_revision() {
    use etcd_client::{Txn, TxnOp};
    // 30000 leases with dual-stack vxlan data: about 8 MB, more than the 4 MiB a gRPC message
    // may carry, so one range request cannot return them.
    const N: u32 = 30_000;
    let mut f =
        fixture(r#"{"Network":"10.128.0.0/9","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#).await;
    let value = |i: u32| {
        format!(
            r#"{{"PublicIP":"10.0.{}.{}","PublicIPv6":"fd00::{i:x}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:{:02x}:{:02x}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"02:00:00:01:{:02x}:{:02x}"}}}}"#,
            i / 250,
            i % 250 + 1,
            i / 256,
            i % 256,
            i / 256,
            i % 256
        )
    };
    let mut last_rev = 0;
    for chunk in 0..N / 100 {
        let ops: Vec<TxnOp> = (chunk * 100..chunk * 100 + 100)
            .map(|i| {
                let key = format!("{}/subnets/10.{}.{}.0-24", f.prefix, 128 + i / 256, i % 256);
                TxnOp::put(key, value(i), None)
            })
            .collect();
        let r = f.client.txn(Txn::new().and_then(ops)).await.expect("txn");
        last_rev = r.header().map(|h| h.revision()).unwrap_or(0);
    }
    let m = f.manager(PreviousSubnets::default()).await;
    let l: Listing = m.list().await.expect("list");
    assert_eq!(l.entries.len(), N as usize);
    assert!(l.unreadable.is_empty());
    // Every page at the first page's revision: the listing is one snapshot. (Other tests may
    // write to the same etcd meanwhile, under other prefixes: the revision can be past ours.)
    assert!(l.revision >= last_rev, "{} < {last_rev}", l.revision);
    assert!(l.entries.iter().all(|e| e.mod_revision <= l.revision));
    let mut keys: Vec<&str> = l.entries.iter().map(|e| e.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), N as usize, "no lease twice");
}

#[tokio::test]
async fn a_watch_that_keeps_up_is_not_taken_for_one_that_falls_behind() {
    let mut f = fixture(TUTORIAL).await;
    // Progress checked every 300 ms (flanneld: every 30 s) while leases keep changing for
    // about 2.5 s: a watch that keeps up answers every check, so it never re-lists (a second
    // snapshot) and misses no event. (At 100 ms, a progress answer from the etcd the tests
    // share, busy with a dozen other tests, came late once.)
    let sm = f
        .manager(PreviousSubnets::default())
        .await
        .with_watch_progress_period(Duration::from_millis(300));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let task = tokio::spawn(async move { sm.run_watch(tx).await });
    assert!(matches!(recv(&mut rx).await, LeaseEvent::Snapshot(l) if l.is_empty()));
    for i in 0..30u8 {
        f.put(
            &format!("subnets/10.244.{i}.0-24"),
            &format!(r#"{{"PublicIP":"192.168.64.{i}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:{i:02x}"}}}}"#),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Writes outside the watched prefix move etcd's revision with no event for the watch:
    // only its progress notifications say it is keeping up.
    for i in 0..20 {
        f.put("elsewhere", &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    f.put("subnets/10.244.99.0-24", r#"{"PublicIP":"192.168.64.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:99"}}"#).await;
    let mut added = Vec::new();
    while added.len() < 31 {
        match recv(&mut rx).await {
            LeaseEvent::Added(l) => added.push(l.lease.subnet.to_string()),
            LeaseEvent::Snapshot(l) => panic!("the watch re-listed ({} leases)", l.len()),
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(added.last().map(String::as_str), Some("10.244.99.0/24"));
    task.abort();
}

/// Dual-stack keys name both subnets, so a create guarded by its own key alone lets two nodes
/// that race for the same IPv4 subnet (with different IPv6 ones) both win. Played with a
/// stale listing: another node's lease lands between our listing and our write.
#[tokio::test]
async fn racing_dual_stack_nodes_never_share_an_ipv4_subnet() {
    const ONE_V4: &str = r#"{"Network":"10.6.0.0/16","SubnetMin":"10.6.1.0","SubnetMax":"10.6.1.0","EnableIPv6":true,"IPv6Network":"fd00:6::/56","Backend":{"Type":"vxlan"}}"#;
    let mut f = fixture(ONE_V4).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let stale = sm.list().await.unwrap();
    f.put(
        "subnets/10.6.1.0-24&fd00:6:0:77::-64",
        r#"{"PublicIP":"10.0.0.9","PublicIPv6":"fd00::9","BackendType":"vxlan"}"#,
    )
    .await;
    let r = sm
        .acquire_from(
            &cfg(ONE_V4),
            &attrs("10.0.0.5", "02:00:00:00:00:05"),
            Some(stale),
        )
        .await;
    assert!(matches!(r, Err(SubnetError::OutOfSubnets)), "{r:?}");
    assert_eq!(f.subnet_keys().await, ["10.6.1.0-24&fd00:6:0:77::-64"]);
}

#[tokio::test]
async fn racing_dual_stack_nodes_never_share_an_ipv6_subnet() {
    const ONE_V6: &str = r#"{"Network":"10.6.0.0/16","SubnetMin":"10.6.1.0","SubnetMax":"10.6.1.0","EnableIPv6":true,"IPv6Network":"fd00:6::/56","IPv6SubnetMin":"fd00:6:0:5::","IPv6SubnetMax":"fd00:6:0:5::","Backend":{"Type":"vxlan"}}"#;
    let mut f = fixture(ONE_V6).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let stale = sm.list().await.unwrap();
    // The other node holds another IPv4 subnet (outside our range) but the same IPv6 one.
    f.put(
        "subnets/10.6.9.0-24&fd00:6:0:5::-64",
        r#"{"PublicIP":"10.0.0.9","PublicIPv6":"fd00::9","BackendType":"vxlan"}"#,
    )
    .await;
    let r = sm
        .acquire_from(
            &cfg(ONE_V6),
            &attrs("10.0.0.5", "02:00:00:00:00:05"),
            Some(stale),
        )
        .await;
    assert!(matches!(r, Err(SubnetError::OutOfSubnets)), "{r:?}");
    // Ours was written, seen to collide, and taken back.
    assert_eq!(f.subnet_keys().await, ["10.6.9.0-24&fd00:6:0:5::-64"]);
}

#[tokio::test]
async fn an_ipv6_only_network_in_etcd_is_a_clear_error_naming_why() {
    const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:6::/56","Backend":{"Type":"vxlan"}}"#;
    let f = fixture(V6_ONLY).await;
    let sm = f.manager(PreviousSubnets::default()).await;
    let err = sm
        .acquire_lease(&cfg(V6_ONLY), &attrs("10.0.0.5", "02:00:00:00:00:05"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SubnetError::Config { .. }), "{err:?}");
    assert!(
        text.contains(
            "IPv6-only networks (EnableIPv4: false) run with the Kubernetes subnet manager"
        ) && text.contains("0.0.0.0-0"),
        "{text}"
    );
}

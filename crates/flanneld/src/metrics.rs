//! flanneld's Prometheus metrics (`GET /metrics` on the health server and on the state
//! socket). The Prometheus text format 0.0.4 by default, which every Prometheus and promtool
//! reads; OpenMetrics when the scraper asks for it in `Accept`.
//!
//! The daemon's own counters are prometheus-client metrics updated where things happen; the
//! datastore's and the udp data path's live in their crates as plain atomics (no metrics
//! library down there) and are read at scrape time by [`Collected`].

use flannel_backend::datapath::counters::Counters as DatapathCounters;
use flannel_backend::{ReconcileReport, Repairs};
use flannel_subnet::stats::DatastoreStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Label = [(&'static str, &'static str); 1];

/// What one network policy pass leaves in the metrics.
#[derive(Debug, Clone, Default)]
pub struct PolicyPass {
    pub policies: usize,
    /// This node's pods isolated for (ingress, egress).
    pub isolated: (usize, usize),
    pub rules: usize,
    pub elements: usize,
    pub compile: Duration,
    pub apply: Duration,
}
type OwnedLabel = [(&'static str, String); 1];

/// Reconcile pass durations, 100 µs to ~6 s by threes: an incremental pass takes about a
/// millisecond, a cold start with 20000 peers a few seconds. Written out rather than computed:
/// `powf` would link libm into flanneld for this alone (~300 KB more resident code).
const PASS_BUCKETS: [f64; 11] = [
    0.0001, 0.0003, 0.0009, 0.0027, 0.0081, 0.0243, 0.0729, 0.2187, 0.6561, 1.9683, 5.9049,
];

/// The `Content-Type` of each format.
pub const TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Known leases (ours included) by `BackendType` ("udp" for upstream's untyped udp leases).
    pub leases: Family<OwnedLabel, Gauge>,
    /// When our lease ends unless renewed, in seconds since the epoch (0: it never does).
    pub lease_expiry: Gauge,
    pub renewals: Counter,
    pub renewal_failures: Counter,
    pub reclaims: Counter,
    pub lease_events: Counter,
    /// Claims on a subnet that overlaps one held before: seen in all, and left out now.
    pub lease_conflicts: Counter,
    pub lease_conflicts_now: Gauge,
    /// Reconcile passes by trigger, and by mode: a full pass, or an incremental one (lease
    /// changes or notified deletions applied without reading the kernel back).
    pub passes: Family<[(&'static str, &'static str); 2], Counter>,
    pub pass_seconds: Family<Label, Histogram>,
    pub repairs: Family<Label, Counter>,
    pub netlink_errors: Counter,
    pub firewall_errors: Counter,
    /// `--network-policy`: NetworkPolicies known, this node's pods isolated per direction,
    /// rules and set elements in the table, and how long compiling and applying took.
    pub policies: Gauge,
    pub policy_isolated: Family<Label, Gauge>,
    pub policy_rules: Gauge,
    pub policy_elements: Gauge,
    pub policy_compile_seconds: Histogram,
    pub policy_apply_seconds: Histogram,
    backend: Family<OwnedLabel, Gauge>,
    udp: Arc<OnceLock<Arc<DatapathCounters>>>,
    wg: Arc<OnceLock<Arc<DatapathCounters>>>,
    datastore: Arc<OnceLock<Arc<DatastoreStats>>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut m = Metrics {
            registry: Registry::with_prefix("flannel"),
            leases: Family::default(),
            lease_expiry: Gauge::default(),
            renewals: Counter::default(),
            renewal_failures: Counter::default(),
            reclaims: Counter::default(),
            lease_events: Counter::default(),
            lease_conflicts: Counter::default(),
            lease_conflicts_now: Gauge::default(),
            passes: Family::default(),
            pass_seconds: Family::new_with_constructor(|| Histogram::new(PASS_BUCKETS)),
            repairs: Family::default(),
            netlink_errors: Counter::default(),
            firewall_errors: Counter::default(),
            policies: Gauge::default(),
            policy_isolated: Family::default(),
            policy_rules: Gauge::default(),
            policy_elements: Gauge::default(),
            policy_compile_seconds: Histogram::new(PASS_BUCKETS),
            policy_apply_seconds: Histogram::new(PASS_BUCKETS),
            backend: Family::default(),
            udp: Arc::default(),
            wg: Arc::default(),
            datastore: Arc::default(),
        };
        let r = &mut m.registry;
        r.register(
            "leases",
            "Subnet leases known to this node (its own included), by backend type",
            m.leases.clone(),
        );
        r.register(
            "lease_expiry_timestamp_seconds",
            "When this node's lease ends unless renewed, in seconds since the epoch (0 if it never does)",
            m.lease_expiry.clone(),
        );
        r.register(
            "lease_renewals",
            "Renewals of this node's lease",
            m.renewals.clone(),
        );
        r.register(
            "lease_renewal_failures",
            "Failed renewals of this node's lease",
            m.renewal_failures.clone(),
        );
        r.register(
            "lease_reclaims",
            "Times this node's lease was found gone or changed and written back",
            m.reclaims.clone(),
        );
        r.register(
            "lease_events",
            "Lease additions, changes and removals received from the datastore",
            m.lease_events.clone(),
        );
        r.register(
            "lease_conflicts",
            "Leases found claiming a subnet that overlaps one another node held first (left out, the first holder keeps its routes)",
            m.lease_conflicts.clone(),
        );
        r.register(
            "lease_conflicts_current",
            "Leases left out now because their subnet overlaps one another node held first",
            m.lease_conflicts_now.clone(),
        );
        r.register(
            "reconcile_passes",
            "Reconcile passes by trigger (start, lease, netlink, timer) and mode (full, incremental)",
            m.passes.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time a reconcile pass took, by trigger",
            m.pass_seconds.clone(),
        );
        r.register(
            "repairs",
            "Entries flanneld had applied, later found missing or different, and rewritten, by kind (route, neighbour, fdb, device, address, rule, policy)",
            m.repairs.clone(),
        );
        r.register(
            "network_policies",
            "NetworkPolicies flanneld knows (--network-policy)",
            m.policies.clone(),
        );
        r.register(
            "network_policy_isolated_pods",
            "This node's pods isolated by a NetworkPolicy, by direction (ingress, egress)",
            m.policy_isolated.clone(),
        );
        r.register(
            "network_policy_rules",
            "Rules in the node's network policy table",
            m.policy_rules.clone(),
        );
        r.register(
            "network_policy_set_elements",
            "Set and map elements in the node's network policy table",
            m.policy_elements.clone(),
        );
        r.register(
            "network_policy_compile_duration_seconds",
            "Time compiling the cluster's policies for this node took",
            m.policy_compile_seconds.clone(),
        );
        r.register(
            "network_policy_apply_duration_seconds",
            "Time reading the policy table and applying the difference took",
            m.policy_apply_seconds.clone(),
        );
        r.register(
            "netlink_errors",
            "Failed kernel requests (netlink) while reconciling",
            m.netlink_errors.clone(),
        );
        r.register(
            "firewall_errors",
            "Failed checks or writes of the iptables or nftables rules",
            m.firewall_errors.clone(),
        );
        r.register(
            "build",
            "The flanneld build",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "backend_info",
            "The backend this node runs (from the network config), as a label; always 1",
            m.backend.clone(),
        );
        for dir in ["ingress", "egress"] {
            let _ = m.policy_isolated.get_or_create(&[("direction", dir)]);
        }
        // Repairs of every kind exist from the start, so a rate over them is never empty.
        for kind in REPAIR_KINDS {
            let _ = m.repairs.get_or_create(&[("kind", kind)]);
        }
        m.registry.register_collector(Box::new(Collected {
            udp: m.udp.clone(),
            wg: m.wg.clone(),
            datastore: m.datastore.clone(),
        }));
        Arc::new(m)
    }

    /// The backend type, once the network config is read.
    pub fn set_backend(&self, backend: &str) {
        self.backend.clear();
        self.backend
            .get_or_create(&[("backend", backend.to_string())])
            .set(1);
    }

    /// Reads the datastore's watch counters from now on (the subnet manager's handle).
    pub fn watch_datastore(&self, stats: Arc<DatastoreStats>) {
        let _ = self.datastore.set(stats);
    }

    /// The lease watch's counters, once the datastore is known.
    pub fn datastore(&self) -> Option<&DatastoreStats> {
        self.datastore.get().map(|d| d.as_ref())
    }

    /// Reads a userspace data path's counters (udp or wireguard) from now on.
    pub fn watch_datapath(&self, counters: flannel_backend::DatapathCounters) {
        match counters {
            flannel_backend::DatapathCounters::Udp(c) => {
                let _ = self.udp.set(c);
            }
            flannel_backend::DatapathCounters::Wireguard(c) => {
                let _ = self.wg.set(c);
            }
        }
    }

    /// The exposition in the Prometheus text format, or OpenMetrics.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing into a String cannot fail; a broken metric would show as a short page.
        if let Err(e) = r {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }

    /// One reconcile pass done: its trigger, mode, duration and what it repaired.
    pub fn pass(&self, trigger: &'static str, full: bool, took: Duration, r: &ReconcileReport) {
        let mode = if full { "full" } else { "incremental" };
        self.passes
            .get_or_create(&[("trigger", trigger), ("mode", mode)])
            .inc();
        self.pass_seconds
            .get_or_create(&[("trigger", trigger)])
            .observe(took.as_secs_f64());
        self.repaired(&r.repairs);
        self.netlink_errors.inc_by(r.failed as u64);
    }

    pub fn repaired(&self, r: &Repairs) {
        for (kind, n) in r.by_kind() {
            if n > 0 {
                self.repairs
                    .get_or_create(&[("kind", kind)])
                    .inc_by(n as u64);
            }
        }
    }

    /// One policy pass: what the table holds now and what it took.
    pub fn policy_pass(&self, p: &PolicyPass) {
        self.policies.set(p.policies as i64);
        self.policy_isolated
            .get_or_create(&[("direction", "ingress")])
            .set(p.isolated.0 as i64);
        self.policy_isolated
            .get_or_create(&[("direction", "egress")])
            .set(p.isolated.1 as i64);
        self.policy_rules.set(p.rules as i64);
        self.policy_elements.set(p.elements as i64);
        self.policy_compile_seconds.observe(p.compile.as_secs_f64());
        self.policy_apply_seconds.observe(p.apply.as_secs_f64());
    }

    /// The network policy table was changed by someone else and put back.
    pub fn policy_repaired(&self) {
        self.repairs.get_or_create(&[("kind", "policy")]).inc();
    }

    /// The firewall rules had to be installed again (some were missing or changed).
    pub fn rules_repaired(&self) {
        self.repairs.get_or_create(&[("kind", "rule")]).inc();
    }

    /// Our lease now lasts `ttl` from now (`Duration::MAX`: forever).
    pub fn lease_renewed_for(&self, ttl: Duration) {
        let end = SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .filter(|_| ttl < Duration::from_secs(86400 * 365 * 100))
            .map_or(0, |d| d.as_secs() as i64);
        self.lease_expiry.set(end);
    }

    /// Recounts the known leases by backend type.
    pub fn count_leases<'a>(&self, types: impl Iterator<Item = &'a str>) {
        let mut by: std::collections::BTreeMap<&str, i64> = Default::default();
        for t in types {
            *by.entry(if t.is_empty() { "udp" } else { t }).or_default() += 1;
        }
        self.leases.clear();
        for (t, n) in by {
            self.leases
                .get_or_create(&[("backend", t.to_string())])
                .set(n);
        }
    }

    /// A lease of `backend_type` appeared (+1) or went (-1).
    pub fn lease_delta(&self, backend_type: &str, by: i64) {
        let t = if backend_type.is_empty() {
            "udp"
        } else {
            backend_type
        };
        self.leases
            .get_or_create(&[("backend", t.to_string())])
            .inc_by(by);
    }
}

/// The repair kinds, as label values.
pub const REPAIR_KINDS: [&str; 7] = [
    "route",
    "neighbour",
    "fdb",
    "device",
    "address",
    "rule",
    "policy",
];

/// Counters kept outside this crate, read at every scrape.
#[derive(Debug)]
struct Collected {
    udp: Arc<OnceLock<Arc<DatapathCounters>>>,
    wg: Arc<OnceLock<Arc<DatapathCounters>>>,
    datastore: Arc<OnceLock<Arc<DatastoreStats>>>,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in values {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Collected {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fresh = DatastoreStats::default();
        let ds = self.datastore.get().map_or(&fresh, |d| d.as_ref());
        counter(
            &mut enc,
            "datastore_watch_restarts",
            "Times the lease watch was started again (a dropped stream, a datastore restart, a timeout).",
            &[(&[], ds.watch_restarts())],
        )?;
        counter(
            &mut enc,
            "datastore_relists",
            "Full listings of the leases after the first (history compacted or gone, a watch fallen behind).",
            &[(&[], ds.relists())],
        )?;
        counter(
            &mut enc,
            "datastore_errors",
            "Failed datastore requests of the lease watch (each retry counts).",
            &[(&[], ds.errors())],
        )?;
        if let Some(c) = self.wg.get() {
            wireguard(&mut enc, c)?;
        }
        let Some(c) = self.udp.get() else {
            return Ok(());
        };
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut enc,
            "udp_packets",
            "Pod packets the udp backend sent to peers (tx) and delivered from them (rx).",
            &[
                (&[("direction", "tx")], v(&c.tx_packets)),
                (&[("direction", "rx")], v(&c.rx_packets)),
            ],
        )?;
        counter(
            &mut enc,
            "udp_bytes",
            "Pod bytes the udp backend sent to peers (tx) and delivered from them (rx).",
            &[
                (&[("direction", "tx")], v(&c.tx_bytes)),
                (&[("direction", "rx")], v(&c.rx_bytes)),
            ],
        )?;
        counter(
            &mut enc,
            "udp_drops",
            "Packets the udp backend dropped, by reason.",
            &[
                (&[("reason", "unknown_sender")], v(&c.rx_unknown_peer)),
                (&[("reason", "not_for_this_node")], v(&c.rx_not_for_us)),
                (&[("reason", "spoofed_source")], v(&c.rx_spoofed_source)),
                (&[("reason", "malformed")], v(&c.malformed)),
                (&[("reason", "no_route")], v(&c.no_route)),
                (&[("reason", "ttl_expired")], v(&c.ttl_expired)),
                (&[("reason", "send_error")], v(&c.errors)),
            ],
        )
    }
}

/// The wireguard backend's families.
fn wireguard(enc: &mut DescriptorEncoder, c: &DatapathCounters) -> Result<(), std::fmt::Error> {
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut m = enc.encode_descriptor(
        "wireguard_peers",
        "WireGuard peers this node has (on all its devices).",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    let no_labels: &[(&str, &str)] = &[];
    ConstGauge::new(v(&c.peers) as i64).encode(m.encode_family(&no_labels)?)?;
    counter(
        enc,
        "wireguard_packets",
        "Pod packets the wireguard backend sealed for peers (tx) and opened from them (rx).",
        &[
            (&[("direction", "tx")], v(&c.tx_packets)),
            (&[("direction", "rx")], v(&c.rx_packets)),
        ],
    )?;
    counter(
        enc,
        "wireguard_bytes",
        "Pod bytes the wireguard backend sent to peers (tx) and delivered from them (rx).",
        &[
            (&[("direction", "tx")], v(&c.tx_bytes)),
            (&[("direction", "rx")], v(&c.rx_bytes)),
        ],
    )?;
    counter(
        enc,
        "wireguard_handshakes_sent",
        "WireGuard handshake initiations sent (first contact, rekeying, retries).",
        &[(&[], v(&c.handshakes_sent))],
    )?;
    counter(
        enc,
        "wireguard_drops",
        "Datagrams or packets the wireguard backend dropped, by reason.",
        &[
            (&[("reason", "unknown_peer")], v(&c.rx_unknown_peer)),
            (&[("reason", "not_authentic")], v(&c.rx_invalid)),
            (&[("reason", "source_not_allowed")], v(&c.rx_spoofed_source)),
            (&[("reason", "no_route")], v(&c.no_route)),
            (&[("reason", "malformed")], v(&c.malformed)),
            (&[("reason", "send_error")], v(&c.errors)),
            (&[("reason", "under_load_cookie")], v(&c.rx_under_load)),
            (
                &[("reason", "handshake_rate_limited")],
                v(&c.rx_rate_limited),
            ),
            (
                &[("reason", "handshake_queue_full")],
                v(&c.rx_handshake_queue_full),
            ),
        ],
    )
}

/// Whether a request's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(head: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_every_family_with_help_and_counters_end_in_total() {
        let m = Metrics::new();
        m.set_backend("vxlan");
        m.count_leases(["vxlan", "vxlan", ""].into_iter());
        let r = ReconcileReport {
            repairs: Repairs {
                route: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        m.pass("netlink", true, Duration::from_millis(3), &r);
        m.rules_repaired();
        let t = m.render(false);
        assert!(t.contains("# TYPE flannel_repairs_total counter"), "{t}");
        assert!(t.contains("flannel_repairs_total{kind=\"route\"} 2"), "{t}");
        assert!(t.contains("flannel_repairs_total{kind=\"rule\"} 1"), "{t}");
        assert!(t.contains("flannel_repairs_total{kind=\"fdb\"} 0"), "{t}");
        assert!(t.contains("flannel_leases{backend=\"vxlan\"} 2"), "{t}");
        assert!(t.contains("flannel_leases{backend=\"udp\"} 1"), "{t}");
        assert!(t.contains("flannel_reconcile_passes_total{trigger=\"netlink\",mode=\"full\"} 1"));
        assert!(t.contains("flannel_reconcile_duration_seconds_count{trigger=\"netlink\"} 1"));
        assert!(t.contains("flannel_build_info{version="), "{t}");
        assert!(
            t.contains("flannel_backend_info{backend=\"vxlan\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE flannel_datastore_relists_total counter"),
            "{t}"
        );
        assert!(
            !t.contains("udp_packets"),
            "no udp metrics without the udp backend"
        );
        assert!(!t.contains("# EOF"));
        // Every family has help text.
        for l in t.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = l.split_whitespace().nth(2).unwrap_or("");
            assert!(t.contains(&format!("# HELP {name} ")), "{name} has no help");
        }
        let om = m.render(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn wireguard_counters_appear_once_watched_with_help() {
        let m = Metrics::new();
        assert!(!m.render(false).contains("wireguard"));
        let c = Arc::new(DatapathCounters::default());
        c.peers.store(2, Ordering::Relaxed);
        c.rx_spoofed_source.store(4, Ordering::Relaxed);
        c.handshakes_sent.store(3, Ordering::Relaxed);
        m.watch_datapath(flannel_backend::DatapathCounters::Wireguard(c));
        let t = m.render(false);
        assert!(t.contains("# TYPE flannel_wireguard_peers gauge"), "{t}");
        assert!(t.contains("flannel_wireguard_peers 2"), "{t}");
        assert!(
            t.contains("flannel_wireguard_handshakes_sent_total 3"),
            "{t}"
        );
        assert!(
            t.contains("flannel_wireguard_drops_total{reason=\"source_not_allowed\"} 4"),
            "{t}"
        );
        for l in t.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = l.split_whitespace().nth(2).unwrap_or("");
            assert!(t.contains(&format!("# HELP {name} ")), "{name} has no help");
        }
    }

    #[test]
    fn udp_counters_appear_once_watched() {
        let m = Metrics::new();
        let c = Arc::new(DatapathCounters::default());
        c.tx_packets.store(5, Ordering::Relaxed);
        c.rx_spoofed_source.store(3, Ordering::Relaxed);
        m.watch_datapath(flannel_backend::DatapathCounters::Udp(c));
        let t = m.render(false);
        assert!(
            t.contains("flannel_udp_packets_total{direction=\"tx\"} 5"),
            "{t}"
        );
        assert!(
            t.contains("flannel_udp_drops_total{reason=\"spoofed_source\"} 3"),
            "{t}"
        );
    }

    #[test]
    fn lease_expiry_is_zero_for_a_lease_that_never_ends() {
        let m = Metrics::new();
        m.lease_renewed_for(Duration::MAX);
        assert_eq!(m.lease_expiry.get(), 0);
        m.lease_renewed_for(Duration::from_secs(3600));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((m.lease_expiry.get() - now - 3600).abs() <= 2);
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert!(wants_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
        ));
        assert!(!wants_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: text/plain\r\n"
        ));
    }
}

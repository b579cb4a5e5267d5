//! flanneld's `/metrics` checked with the real Prometheus tools, as an operator would: Debian's
//! `promtool check metrics` accepts the page, a real `prometheus` scrapes the lab's flanneld
//! and answers a query with the value flanneld serves, and the repair counters move when the
//! lab is disturbed.

use crate::common;

use common::lab::Lab;
use common::{eventually, http_get_in_ns, ip, Proc, TempDir};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const PORT: u16 = 9120;

fn lab(backend_args: &[&str]) -> Lab {
    let mut args = vec!["--healthz-port=9120", "--kernel-resync=1"];
    args.extend_from_slice(backend_args);
    Lab::up(2, 1, &args)
}

fn scrape(ns: &str) -> String {
    let (code, body) = http_get_in_ns(ns, PORT, "/metrics").expect("flanneld answers /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of one sample (`name{labels}` exactly as written on the page).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn promtool_check(page: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let o = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), said)
}

#[test]
fn promtool_accepts_the_page_and_a_deleted_route_counts_as_a_route_repair() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab(&[]);
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let page = scrape(&a.netns);
    let (ok, said) = promtool_check(&page);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{page}"
    );
    assert_eq!(
        sample(&page, "flannel_leases{backend=\"vxlan\"}"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "flannel_backend_info{backend=\"vxlan\"}"),
        Some(1.0)
    );
    assert!(sample(&page, "flannel_lease_expiry_timestamp_seconds").unwrap_or(0.0) > 1.7e9);
    let route = "flannel_repairs_total{kind=\"route\"}";
    let before = sample(&page, route).expect("route repairs are counted");

    // The route to the other node's pods, deleted by hand: put back, and counted.
    ip(&["-n", &a.netns, "route", "del", &b.subnet]);
    let healed = eventually(Duration::from_secs(5), || {
        sample(&scrape(&a.netns), route).unwrap_or(0.0) >= before + 1.0
            && ip(&["-n", &a.netns, "route", "show", &b.subnet]).contains("flannel.1")
    });
    assert!(healed.is_some(), "{}", scrape(&a.netns));
    // `flannel-lab status` shows it too.
    let st = flannel_lab::status::to_json(&lab.state);
    assert!(
        st["nodes"][0]["metrics"]["repairs_route"]
            .as_f64()
            .unwrap_or(0.0)
            >= 1.0,
        "{st:#}"
    );
    assert!(flannel_lab::status::render(&lab.state).contains("flanneld metrics: 2 leases"));
    // A neighbour and an FDB entry likewise, each under its own kind.
    let page = scrape(&a.netns);
    let (n0, f0) = (
        sample(&page, "flannel_repairs_total{kind=\"neighbour\"}").unwrap_or(-1.0),
        sample(&page, "flannel_repairs_total{kind=\"fdb\"}").unwrap_or(-1.0),
    );
    let gw = b.subnet.replace(".0/24", ".0");
    ip(&["-n", &a.netns, "neigh", "del", &gw, "dev", "flannel.1"]);
    let mac = common::link_mac(&b.netns, "flannel.1");
    common::ctl::sh_in(
        a,
        &format!("bridge fdb del {mac} dev flannel.1 dst {} self", b.ip),
        &[],
    );
    let moved = eventually(Duration::from_secs(5), || {
        let p = scrape(&a.netns);
        sample(&p, "flannel_repairs_total{kind=\"neighbour\"}").unwrap_or(0.0) > n0
            && sample(&p, "flannel_repairs_total{kind=\"fdb\"}").unwrap_or(0.0) > f0
    });
    assert!(moved.is_some(), "{}", scrape(&a.netns));
    // OpenMetrics on request.
    let om = common::http_get_in_ns_with(
        &a.netns,
        PORT,
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    )
    .expect("answer");
    assert!(om.1.ends_with("# EOF\n"), "{}", om.1);
}

#[test]
fn a_real_prometheus_scrapes_flanneld_and_reads_a_value_back() {
    if common::skip_without_root() {
        return;
    }
    let lab = lab(&["--iptables-resync=1"]);
    let ns = lab.state.nodes[0].netns.clone();
    let dir = TempDir::new("prom");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flannel\n    static_configs:\n      - targets: ['127.0.0.1:{PORT}']\n"
        ),
    )
    .expect("write prometheus.yml");
    // In the node's namespace, on its loopback: nothing of the host's network is touched.
    let prom = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns, "prometheus"])
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9190")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package) is installed"),
    );
    let q = "/api/v1/query?query=flannel_leases%7Bbackend%3D%22vxlan%22%7D";
    let mut last = String::new();
    let got = eventually(Duration::from_secs(30), || {
        last = http_get_in_ns(&ns, 9190, q)
            .map(|r| r.1)
            .unwrap_or_default();
        last.contains("\"value\":[") && last.contains("\"2\"]")
    });
    drop(prom);
    assert!(
        got.is_some(),
        "prometheus did not read flannel_leases back: {last}"
    );
    assert!(last.contains("\"job\":\"flannel\""), "{last}");
}

/// A two-node lab of `backend` whose first pod has pinged the other: the first node's metrics
/// page, which promtool accepts.
fn pinged_and_scraped(backend: &str) -> (Lab, String) {
    let lab = Lab::up_with(flannel_lab::LabSpec {
        nodes: 2,
        pods_per_node: 1,
        backend: backend.into(),
        flanneld_args: vec!["--healthz-port=9120".into()],
        ..flannel_lab::LabSpec::default()
    });
    let (a, b) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    assert!(flannel_lab::ping::ping(&a.pods[0].netns, &b.pods[0].ip));
    let page = scrape(&a.netns);
    let (ok, said) = promtool_check(&page);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{page}"
    );
    (lab, page)
}

#[test]
fn the_udp_backend_counts_packets_and_bytes_each_way() {
    if common::skip_without_root() {
        return;
    }
    let (_lab, page) = pinged_and_scraped("udp");
    for series in [
        "flannel_udp_packets_total{direction=\"tx\"}",
        "flannel_udp_packets_total{direction=\"rx\"}",
        "flannel_udp_bytes_total{direction=\"tx\"}",
        "flannel_udp_bytes_total{direction=\"rx\"}",
    ] {
        assert!(
            sample(&page, series).unwrap_or(0.0) >= 1.0,
            "{series}:\n{page}"
        );
    }
    assert_eq!(
        sample(&page, "flannel_udp_drops_total{reason=\"spoofed_source\"}"),
        Some(0.0)
    );
}

#[test]
fn the_wireguard_backend_counts_peers_packets_handshakes_and_drops() {
    if common::skip_without_root() {
        return;
    }
    let (_lab, page) = pinged_and_scraped("wireguard");
    assert_eq!(
        sample(&page, "flannel_wireguard_peers"),
        Some(1.0),
        "{page}"
    );
    for series in [
        "flannel_wireguard_packets_total{direction=\"tx\"}",
        "flannel_wireguard_packets_total{direction=\"rx\"}",
        "flannel_wireguard_bytes_total{direction=\"tx\"}",
        "flannel_wireguard_handshakes_sent_total",
    ] {
        assert!(
            sample(&page, series).unwrap_or(0.0) >= 1.0,
            "{series}:\n{page}"
        );
    }
    assert_eq!(
        sample(
            &page,
            "flannel_wireguard_drops_total{reason=\"source_not_allowed\"}"
        ),
        Some(0.0)
    );
}

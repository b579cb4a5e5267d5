//! Each node's flanneld metrics, read from its state socket (`GET /metrics`) for `status`.

use crate::state::NodeState;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Every sample on the node's metrics page: `name{labels}` → value.
pub fn scrape(n: &NodeState) -> anyhow::Result<BTreeMap<String, f64>> {
    let path = crate::cluster::state_socket(n);
    let mut s = UnixStream::connect(&path)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: flanneld\r\nConnection: close\r\n\r\n"
    )?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    Ok(parse(page.split_once("\r\n\r\n").map_or("", |(_, b)| b)))
}

pub fn parse(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of one metric (all label values).
pub fn total(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// The few figures an operator looks at first.
pub fn key_figures(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in [
        "flannel_leases",
        "flannel_reconcile_passes_total",
        "flannel_repairs_total",
        "flannel_netlink_errors_total",
        "flannel_firewall_errors_total",
        "flannel_datastore_errors_total",
        "flannel_datastore_watch_restarts_total",
        "flannel_datastore_relists_total",
        "flannel_lease_renewals_total",
        "flannel_udp_packets_total",
        "flannel_udp_drops_total",
    ] {
        if m.keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")))
        {
            out.insert(name.to_string(), total(m, name));
        }
    }
    for kind in ["route", "neighbour", "fdb", "device", "address", "rule"] {
        let k = format!("flannel_repairs_total{{kind=\"{kind}\"}}");
        if let Some(v) = m.get(&k) {
            out.insert(format!("repairs_{kind}"), *v);
        }
    }
    out
}

/// One line for `status`.
pub fn line(m: &BTreeMap<String, f64>) -> String {
    let k = key_figures(m);
    let g = |n: &str| k.get(n).copied().unwrap_or(0.0);
    let repairs: Vec<String> = ["route", "neighbour", "fdb", "device", "address", "rule"]
        .iter()
        .map(|r| format!("{r} {}", g(&format!("repairs_{r}"))))
        .collect();
    let mut s = format!(
        "{} leases, {} reconcile passes, repairs: {}; netlink errors {}, firewall errors {}; datastore errors {}, watch restarts {}, relists {}",
        g("flannel_leases"),
        g("flannel_reconcile_passes_total"),
        repairs.join(", "),
        g("flannel_netlink_errors_total"),
        g("flannel_firewall_errors_total"),
        g("flannel_datastore_errors_total"),
        g("flannel_datastore_watch_restarts_total"),
        g("flannel_datastore_relists_total"),
    );
    if k.contains_key("flannel_udp_packets_total") {
        s += &format!(
            "; udp packets {}, drops {}",
            g("flannel_udp_packets_total"),
            g("flannel_udp_drops_total")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_figures_sum_label_values() {
        let m = parse(
            "# TYPE flannel_leases gauge\nflannel_leases{backend=\"vxlan\"} 2\nflannel_leases{backend=\"udp\"} 1\nflannel_repairs_total{kind=\"route\"} 3\nflannel_repairs_total{kind=\"fdb\"} 1\n",
        );
        let k = key_figures(&m);
        assert_eq!(k["flannel_leases"], 3.0);
        assert_eq!(k["flannel_repairs_total"], 4.0);
        assert_eq!(k["repairs_route"], 3.0);
        assert!(line(&m).contains("3 leases"));
        assert!(line(&m).contains("route 3, neighbour 0, fdb 1"));
    }
}

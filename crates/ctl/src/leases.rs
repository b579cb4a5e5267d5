//! `flannelctl leases`: every lease in the datastore (etcd or the Kubernetes API, reached
//! with flanneld's own flags and `FLANNELD_*` variables), as a table or JSON.

use anyhow::Context;
use flannel_cli::Options;
use flannel_core::state::LeaseView;
use flannel_core::subnet_env::PreviousSubnets;
use flannel_subnet::etcd::EtcdSubnetManager;
use flannel_subnet::kube::KubeSubnetManager;
use flannel_subnet::SubnetManager;
use std::time::{SystemTime, UNIX_EPOCH};

/// The leases, sorted by subnet.
pub async fn list(o: &Options) -> anyhow::Result<Vec<LeaseView>> {
    let from = match &o.kube {
        Some(_) => "the Kubernetes API".to_string(),
        None => format!("etcd at {}", o.etcd.endpoints.join(",")),
    };
    read(o)
        .await
        .with_context(|| format!("reading the leases from {from}"))
}

async fn read(o: &Options) -> anyhow::Result<Vec<LeaseView>> {
    let mut out = match &o.kube {
        Some(k) => {
            let sm = KubeSubnetManager::connect(k.clone()).await?;
            let leases = sm.list_leases().await?;
            leases
                .iter()
                .map(|c| LeaseView::of(&c.lease, sm.describe(&c.owner), None))
                .collect()
        }
        None => {
            let sm = EtcdSubnetManager::connect(&o.etcd, PreviousSubnets::default()).await?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut v = Vec::new();
            for e in sm.list().await?.entries {
                let ttl = sm.time_to_live(e.etcd_lease).await?;
                v.push(LeaseView::of(
                    &e.lease,
                    e.key,
                    ttl.map(|t| now + t.as_secs()),
                ));
            }
            v
        }
    };
    out.sort_by_key(|l| (l.subnet, l.subnet6));
    Ok(out)
}

/// The VTEP MAC (vxlan), else the public key (wireguard), else "-".
fn backend_id(l: &LeaseView) -> String {
    let field = |d: &Option<serde_json::Value>, k: &str| {
        d.as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    field(&l.backend_data, "VtepMAC")
        .or_else(|| field(&l.backend_data, "PublicKey"))
        .or_else(|| field(&l.backend_v6_data, "VtepMAC"))
        .unwrap_or_else(|| "-".into())
}

/// Seconds from now until `at`, as "in 23h59m" or "expired"; "never" without an end.
pub fn expiry(at: Option<u64>, now: u64) -> String {
    match at {
        None => "never".into(),
        Some(t) if t <= now => "expired".into(),
        Some(t) => {
            let s = t - now;
            format!("in {}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
        }
    }
}

/// The table an operator reads.
pub fn table(leases: &[LeaseView], now: u64) -> String {
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let rows: Vec<[String; 7]> = leases
        .iter()
        .map(|l| {
            [
                dash(l.subnet.map(|s| s.to_string())),
                dash(l.subnet6.map(|s| s.to_string())),
                dash(l.public_ip.map(|s| s.to_string())),
                if l.backend_type.is_empty() {
                    "udp".into()
                } else {
                    l.backend_type.clone()
                },
                backend_id(l),
                expiry(l.expires, now),
                l.key.clone(),
            ]
        })
        .collect();
    crate::render::table(
        &[
            "SUBNET",
            "SUBNET6",
            "PUBLIC-IP",
            "BACKEND",
            "VTEP-MAC/KEY",
            "EXPIRES",
            "KEY",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reads_like_a_duration() {
        assert_eq!(expiry(None, 10), "never");
        assert_eq!(expiry(Some(5), 10), "expired");
        assert_eq!(expiry(Some(10 + 86399), 10), "in 23h59m59s");
    }

    #[test]
    fn the_table_shows_mac_and_udp_for_untyped_leases() {
        let l = LeaseView {
            key: "/coreos.com/network/subnets/10.244.1.0-24".into(),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            public_ip: Some("10.0.0.51".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:01"})),
            expires: Some(100 + 3600),
            ..Default::default()
        };
        let u = LeaseView {
            key: "k2".into(),
            subnet: Some("10.244.2.0/24".parse().unwrap()),
            ..Default::default()
        };
        let t = table(&[l, u], 100);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SUBNET "), "{t}");
        assert!(
            lines[1].contains("02:00:00:00:00:01") && lines[1].contains("in 1h00m00s"),
            "{t}"
        );
        assert!(lines[2].contains(" udp "), "{t}");
    }
}

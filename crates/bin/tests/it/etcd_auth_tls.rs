//! flanneld against a real etcd with authentication and TLS: it re-authenticates after etcd
//! restarts (simple tokens die with the process), waits quietly for an etcd that is down at
//! start, uses `--etcd-cafile` for an https endpoint, and says clearly what it does.

use crate::common;

use common::{eventually, Node};
use std::time::Duration;

const CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const PEER: &str = r#"{"PublicIP":"10.0.0.60","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:60"}}"#;
const AUTH_ENV: [(&str, &str); 2] = [
    ("FLANNELD_ETCD_USERNAME", "root"),
    ("FLANNELD_ETCD_PASSWORD", "s3cret-PW"),
];

/// A node whose etcd holds the config and has authentication turned on (user `root`).
fn node_with_auth(tag: &str) -> Node {
    let mut n = Node::new(tag);
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.etcdctl(&["user", "add", "root:s3cret-PW"]);
    n.etcdctl(&["auth", "enable"]);
    n.etcdctl_flags.push("--user=root:s3cret-PW".into());
    n
}

fn routes(n: &Node) -> String {
    n.exec("ip", &["route", "show"])
}

#[test]
fn an_authenticated_flanneld_catches_up_after_etcd_restarts() {
    if common::skip_without_root() {
        return;
    }
    let mut n = node_with_auth("au");
    n.start_env(&["--iface=eth0"], &AUTH_ENV);
    n.wait_ready();
    let own = n.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets/",
    ]);
    let own = own.trim().to_string();
    assert!(own.contains("/subnets/10.244."), "{own}");
    // Simple auth tokens live in etcd's memory: after a restart every old token is invalid.
    n.stop_etcd();
    n.start_etcd();
    // Writes (our lease expired meanwhile, taken back) and the watch (a new peer) both work.
    n.etcdctl(&["del", &own]);
    // The made-up peer's subnet must not be the one flanneld happened to lease (random).
    let p = if own.contains("/10.244.60.0-24") {
        61
    } else {
        60
    };
    n.etcdctl(&[
        "put",
        &format!("/coreos.com/network/subnets/10.244.{p}.0-24"),
        PEER,
    ]);
    let seen = eventually(Duration::from_secs(20), || {
        routes(&n).contains(&format!("10.244.{p}.0/24 via 10.244.{p}.0 dev flannel.1"))
            && !n.etcdctl(&["get", &own]).is_empty()
    });
    assert!(
        seen.is_some(),
        "flanneld did not catch up after etcd restarted:\n{}",
        n.log()
    );
    assert!(n.flanneld_running());
}

#[test]
fn with_credentials_and_etcd_down_at_start_flanneld_waits_quietly() {
    if common::skip_without_root() {
        return;
    }
    let mut n = node_with_auth("ad");
    n.stop_etcd();
    n.start_env(&["--iface=eth0"], &AUTH_ENV);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        n.flanneld_running(),
        "flanneld gave up while etcd was down:\n{}",
        n.log()
    );
    let waits = n.log().matches("waiting for etcd").count();
    assert!(
        (1..=2).contains(&waits),
        "say it once, not every retry ({waits} times):\n{}",
        n.log()
    );
    n.start_etcd();
    n.wait_ready();
    assert!(
        !n.log().contains("s3cret-PW"),
        "the password stays out of the log"
    );
}

#[test]
fn an_https_endpoint_with_only_a_ca_file_is_verified_with_that_ca() {
    if common::skip_without_root() {
        return;
    }
    let (mut n, tls) = Node::with_tls("ca");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    let ca = n.tls_files()("ca.pem");
    assert!(std::path::Path::new(&ca).exists(), "{}", tls.ca.display());
    n.start(&[&format!("--etcd-cafile={ca}")]);
    n.wait_ready();
    let log = n.log();
    assert!(!log.contains("plain text"), "{log}");
    assert!(
        log.contains(&format!("server certificate checked against {ca}")),
        "say what really happens:\n{log}"
    );
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    if common::skip_without_root() {
        return;
    }
    let (mut n, _tls) = Node::with_tls("mt");
    let f = n.tls_files();
    n.stop_etcd();
    n.etcd_args.push("--client-cert-auth".into());
    n.etcd_args
        .push(format!("--trusted-ca-file={}", f("ca.pem")));
    n.start_etcd();
    n.etcdctl_flags.push(format!("--cert={}", f("client.pem")));
    n.etcdctl_flags.push(format!("--key={}", f("client.key")));
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.start(&[
        &format!("--etcd-cafile={}", f("ca.pem")),
        &format!("--etcd-certfile={}", f("client.pem")),
        &format!("--etcd-keyfile={}", f("client.key")),
    ]);
    n.wait_ready();
    assert!(
        n.log()
            .contains(&format!("client certificate {}", f("client.pem"))),
        "{}",
        n.log()
    );
    // Without the client certificate the same etcd refuses us.
    n.stop();
    n.start(&[&format!("--etcd-cafile={}", f("ca.pem"))]);
    let refused = eventually(Duration::from_secs(10), || {
        n.log().contains("waiting for etcd")
    });
    assert!(refused.is_some(), "{}", n.log());
}

#[test]
fn an_https_endpoint_with_an_unknown_ca_is_a_clear_error_not_plain_text() {
    if common::skip_without_root() {
        return;
    }
    let (mut n, _tls) = Node::with_tls("uc");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    // No CA given: the server's certificate cannot be verified, and flanneld says so.
    n.start(&[]);
    let said = eventually(Duration::from_secs(10), || {
        n.log().contains("waiting for etcd")
    });
    assert!(said.is_some(), "{}", n.log());
    let log = n.log();
    assert!(!log.contains("plain text"), "{log}");
    assert!(
        log.contains("--etcd-cafile"),
        "name the flag that fixes it:\n{log}"
    );
}

#[test]
fn swapped_client_certificate_and_key_files_give_one_clear_error() {
    if common::skip_without_root() {
        return;
    }
    let (mut n, _tls) = Node::with_tls("sw");
    let f = n.tls_files();
    n.start(&[
        &format!("--etcd-cafile={}", f("ca.pem")),
        &format!("--etcd-certfile={}", f("client.key")),
        &format!("--etcd-keyfile={}", f("client.pem")),
    ]);
    let status = n.wait_exit(Duration::from_secs(15));
    let log = n.log();
    common::expect_refusal(status, &log, &["--etcd-certfile"]);
    let err = log
        .lines()
        .rfind(|l| l.contains("ERROR"))
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("--etcd-certfile") && err.contains("client.key") && err.contains("swapped"),
        "names the flag, the file and the likely cause: {err}"
    );
    assert_no_repeats(&err);
}

#[test]
fn a_missing_ca_file_names_it_once() {
    if common::skip_without_root() {
        return;
    }
    let (mut n, _tls) = Node::with_tls("mc");
    n.start(&["--etcd-cafile=/nonexistent/ca.pem"]);
    let status = n.wait_exit(Duration::from_secs(15));
    let log = n.log();
    common::expect_refusal(status, &log, &["/nonexistent/ca.pem"]);
    let err = log
        .lines()
        .rfind(|l| l.contains("ERROR"))
        .unwrap_or_default();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    assert_no_repeats(err);
}

/// No part of an error line (split at ": ") appears twice, and no OS error is named twice.
fn assert_no_repeats(line: &str) {
    assert!(
        line.matches("(os error").count() <= 1,
        "cause repeated: {line}"
    );
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p) || p.len() < 4,
            "{p:?} repeated in: {line}"
        );
    }
}

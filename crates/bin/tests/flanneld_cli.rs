//! flanneld as a process: flags, exit codes, and the config wait with clear messages.

mod common;

use common::{bin_dir, eventually, http_get_in_ns, Node};
use std::process::Command;
use std::time::Duration;

fn flanneld(args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("flanneld"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn version_prints_to_stderr_and_exits_0() {
    let o = flanneld(&["--version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).trim().starts_with('v'));
    assert!(o.stdout.is_empty());
    assert!(
        flanneld(&["-version"]).status.success(),
        "single dash works too"
    );
}

#[test]
fn unknown_flag_exits_2_with_usage_and_bad_values_exit_1() {
    let o = flanneld(&["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("flag provided but not defined: -no-such-flag") && err.contains("Usage:"),
        "{err}"
    );

    let o = flanneld(&["--subnet-lease-renew-margin=2000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("--subnet-lease-renew-margin=2000: must be between 1 and 1439 minutes"));

    let o = Command::new(bin_dir().join("flanneld"))
        .env_clear()
        .env("FLANNELD_IP_MASQ", "yes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("FLANNELD_IP_MASQ"));
}

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

#[test]
fn waits_for_a_missing_or_invalid_config_then_starts_and_health_follows() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("cfg");
    n.start(&[
        "--etcd-prefix=/p/",
        "--healthz-ip=127.0.0.1",
        "--healthz-port=8471",
    ]);
    assert!(
        eventually(Duration::from_secs(10), || n
            .log()
            .contains("/p/config does not exist"))
        .is_some(),
        "{}",
        n.log()
    );
    // Alive but not ready while there is no config.
    assert_eq!(
        http_get_in_ns(&n.ns.0, 8471, "/healthz"),
        Some((200, "flanneld is running".into()))
    );
    assert_eq!(
        http_get_in_ns(&n.ns.0, 8471, "/readyz"),
        Some((503, "flanneld is not ready yet".into()))
    );
    // Metrics from the start (ours; upstream has none), before any lease.
    let metrics = http_get_in_ns(&n.ns.0, 8471, "/metrics").expect("an answer");
    assert_eq!(metrics.0, 200);
    assert!(
        metrics.1.contains("flannel_build_info{version="),
        "{}",
        metrics.1
    );
    assert_eq!(
        http_get_in_ns(&n.ns.0, 8471, "/nothing").map(|r| r.0),
        Some(404)
    );

    n.etcdctl(&[
        "put",
        "/p/config",
        r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
    ]);
    let said = eventually(Duration::from_secs(10), || {
        n.log()
            .contains("invalid network config at /p/config: SubnetLen must be less than /31")
    });
    assert!(said.is_some(), "{}", n.log());
    assert!(
        !n.subnet_env().exists(),
        "nothing written while the config is invalid"
    );
    n.etcdctl(&["put", "/p/config", CONFIG]);
    n.wait_ready();
    assert!(std::fs::read_to_string(n.subnet_env())
        .unwrap()
        .contains("FLANNEL_MTU=1450"));
    assert_eq!(
        http_get_in_ns(&n.ns.0, 8471, "/readyz"),
        Some((200, "flanneld is ready".into()))
    );
    assert!(!n.log().contains("ERROR"), "{}", n.log());
    // SIGTERM: exit 0, device and rules stay.
    assert!(n.stop().success());
    assert!(n.log().contains("Exiting cleanly"));
    assert!(n
        .exec("ip", &["link", "show", "flannel.1"])
        .contains("flannel.1"));
    assert!(n
        .exec("iptables", &["-S", "FORWARD"])
        .contains("FLANNEL-FWD"));
}

#[test]
fn blackhole_route_for_the_own_subnet() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("bh");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.start(&[
        "--ip-blackhole-route",
        "--iptables-resync=1",
        "--kernel-resync=1",
    ]);
    n.wait_ready();
    let env = std::fs::read_to_string(n.subnet_env()).unwrap();
    let subnet = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .replace(".1/24", ".0/24");
    let found = eventually(Duration::from_secs(5), || {
        n.exec("ip", &["route", "show", "type", "blackhole"])
            .contains(&format!("blackhole {subnet}"))
    });
    assert!(found.is_some(), "{}", n.exec("ip", &["route"]));
    // The first pod comes after the blackhole: the bridge's connected route for the subnet
    // must win, or no pod of this node is reachable (and with the bridge there first, the
    // blackhole must not replace its route).
    let gw = subnet.replace(".0/24", ".1/24");
    n.exec("ip", &["link", "add", "cni0", "type", "bridge"]);
    n.exec("ip", &["addr", "add", &gw, "dev", "cni0"]);
    n.exec("ip", &["link", "set", "cni0", "up"]);
    std::thread::sleep(Duration::from_millis(2500));
    let pod_ip = subnet.replace(".0/24", ".2");
    let via = n.exec("ip", &["route", "get", &pod_ip]);
    assert!(
        via.contains("dev cni0"),
        "{via}\n{}",
        n.exec("ip", &["route"])
    );
    n.exec("ip", &["link", "del", "cni0"]);
    // The bridge first, then flanneld: its route is kept.
    n.stop();
    n.exec("ip", &["route", "flush", "type", "blackhole"]);
    n.exec("ip", &["link", "add", "cni0", "type", "bridge"]);
    n.exec("ip", &["addr", "add", &gw, "dev", "cni0"]);
    n.exec("ip", &["link", "set", "cni0", "up"]);
    n.start(&[
        "--ip-blackhole-route",
        "--iptables-resync=1",
        "--kernel-resync=1",
    ]);
    n.wait_ready();
    std::thread::sleep(Duration::from_millis(2500));
    let via = n.exec("ip", &["route", "get", &pod_ip]);
    assert!(
        via.contains("dev cni0"),
        "{via}\n{}",
        n.exec("ip", &["route"])
    );
    assert!(n
        .exec("ip", &["route", "show", "type", "blackhole"])
        .contains(&format!("blackhole {subnet}")));
}

#[test]
fn interface_selection_by_regex_reach_and_public_ip_with_clear_errors() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("if");
    n.exec(
        "ip",
        &[
            "link", "add", "uplink7", "type", "veth", "peer", "name", "uplink8",
        ],
    );
    n.exec("ip", &["addr", "add", "192.168.77.7/24", "dev", "uplink7"]);
    n.exec("ip", &["link", "set", "uplink7", "up"]);
    n.exec("ip", &["link", "set", "uplink8", "up"]);
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    let public_ip_of_lease = |n: &Node| {
        n.etcdctl(&[
            "get",
            "--prefix",
            "/coreos.com/network/subnets/",
            "--print-value-only",
        ])
    };
    // Each case: flags (after --iface=eth0 is dropped), the address the lease must publish.
    for (flags, want) in [
        (vec!["--iface-regex=^192\\.168\\."], "192.168.77.7"),
        (vec!["--iface-regex=^uplink"], "192.168.77.7"),
        (vec!["--iface-can-reach=192.168.77.200"], "192.168.77.7"),
        (vec!["--iface=nope", "--iface=192.168.77.7"], "192.168.77.7"),
        (
            vec!["--iface=uplink7", "--public-ip=203.0.113.9"],
            "203.0.113.9",
        ),
    ] {
        n.etcdctl(&["del", "--prefix", "/coreos.com/network/subnets/"]);
        n.start_with(&flags);
        n.wait_ready();
        assert!(
            public_ip_of_lease(&n).contains(&format!("\"PublicIP\":\"{want}\"")),
            "{flags:?}: {}",
            public_ip_of_lease(&n)
        );
        assert!(
            n.exec("ip", &["-d", "link", "show", "flannel.1"])
                .contains(&format!("local {want}")),
            "{flags:?}"
        );
        assert!(n.stop().success());
        n.exec("ip", &["link", "del", "flannel.1"]);
    }
    // Nothing matches: exit 1 naming everything tried.
    n.start_with(&["--iface=eth9", "--iface-regex=^wlan"]);
    let status = n.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", n.log());
    assert!(n.log().contains("no usable interface: tried --iface=eth9 (no interface with that name), --iface-regex=^wlan (no address or name matched)"), "{}", n.log());
}

#[test]
fn an_exhausted_network_is_a_clear_out_of_subnets_error() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("oos");
    // A /28 holds three /30 subnets (.4, .8, .12); all are taken by other nodes.
    n.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.9.9.0/28","Backend":{"Type":"vxlan"}}"#,
    ]);
    for (i, s) in ["10.9.9.4-30", "10.9.9.8-30", "10.9.9.12-30"]
        .iter()
        .enumerate()
    {
        n.etcdctl(&[
            "put",
            &format!("/coreos.com/network/subnets/{s}"),
            &format!(r#"{{"PublicIP":"10.0.0.{}","PublicIPv6":null}}"#, 100 + i),
        ]);
    }
    n.start(&[]);
    let status = n.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", n.log());
    assert!(n.log().contains("out of subnets"), "{}", n.log());
}

#[test]
fn the_health_server_survives_running_out_of_file_descriptors() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("fd");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.nofile = Some(64);
    n.start(&[
        "--healthz-port=8081",
        "--iptables-resync=1",
        "--kernel-resync=1",
    ]);
    n.wait_ready();
    let pid = n.flanneld_pid();
    // 120 idle connections: more than the process may open files.
    let conns = common::idle_connections_in_ns(&n.ns.0, 8081, 120);
    assert!(conns.len() >= 100, "only {} connected", conns.len());
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = common::cpu_seconds(pid);
    let t0 = std::time::Instant::now();
    // Meanwhile the firewall resync still works: a deleted rule comes back.
    let rule = [
        "-D",
        "FLANNEL-FWD",
        "-s",
        "10.244.0.0/16",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "ACCEPT",
    ];
    let o = Command::new("ip")
        .args(["netns", "exec", &n.ns.0, "iptables"])
        .args(rule)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = eventually(Duration::from_secs(5), || {
        n.exec("iptables", &["-S", "FLANNEL-FWD"])
            .contains("-A FLANNEL-FWD -s 10.244.0.0/16")
    });
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    let used = common::cpu_seconds(pid) - cpu0;
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        used < 0.2 * secs,
        "flanneld used {used:.2} s of CPU in {secs:.1} s while connections piled up:\n{}",
        n.log()
    );
    assert!(back.is_some(), "iptables resync starved:\n{}", n.log());
    // Idle connections are closed by the server, not held for ever.
    let closed = eventually(Duration::from_secs(15), || {
        conns.iter().take(5).all(closed_by_peer)
    });
    assert!(closed.is_some(), "idle connections were never closed");
    drop(conns);
    let answers = eventually(Duration::from_secs(15), || {
        http_get_in_ns(&n.ns.0, 8081, "/healthz").map(|r| r.0) == Some(200)
    });
    assert!(
        answers.is_some(),
        "/healthz no longer answers:\n{}",
        n.log()
    );
    assert!(n.flanneld_running());
}

/// Whether the other end closed `c` (EOF or reset), without waiting long.
fn closed_by_peer(c: &std::net::TcpStream) -> bool {
    use std::io::{ErrorKind, Read};
    let _ = c.set_read_timeout(Some(Duration::from_millis(20)));
    match (&*c).read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn an_unreadable_lease_is_reported_once_not_once_per_listing() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("ur");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.9.0-24",
        "garbage",
    ]);
    n.start(&["--iptables-resync=1", "--kernel-resync=1"]);
    n.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let lines: Vec<String> = n
        .log()
        .lines()
        .filter(|l| l.contains("10.244.9.0-24"))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("unreadable"), "{lines:#?}");
    // A different bad value under the same key is news, and said again.
    n.etcdctl(&["put", "/coreos.com/network/subnets/10.244.9.0-24", "{}x"]);
    let again = eventually(Duration::from_secs(5), || {
        n.log()
            .lines()
            .filter(|l| l.contains("10.244.9.0-24"))
            .count()
            == 2
    });
    assert!(again.is_some(), "{}", n.log());
}

#[test]
fn verbose_logging_means_our_logs_not_our_dependencies() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("vv");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.start(&["-v=10", "--iptables-resync=1", "--kernel-resync=1"]);
    n.wait_ready();
    let before = n.log().lines().count();
    std::thread::sleep(Duration::from_secs(3));
    let log = n.log();
    let idle: Vec<&str> = log.lines().skip(before).collect();
    let foreign: Vec<&&str> = idle
        .iter()
        .filter(|l| {
            // `<time> <LEVEL> <target>: ...`
            let target = l.split_whitespace().nth(2).unwrap_or_default();
            !target.starts_with("flannel")
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "{} lines from dependencies in 3 s, e.g. {:?}",
        foreign.len(),
        foreign.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        log.contains("DEBUG") || log.contains("TRACE"),
        "-v=10 still turns on our own debug logs"
    );
    assert!(idle.len() < 200, "{} lines in 3 s of idling", idle.len());
}

#[test]
fn a_lease_planted_with_our_public_ip_does_not_move_us_off_our_subnet() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("pl");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.start(&[]);
    n.wait_ready();
    let env = std::fs::read_to_string(n.subnet_env()).unwrap();
    let ours = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .to_string();
    n.stop();
    // While flanneld is stopped, our lease expires and a lease claiming our PublicIP appears
    // (another node behind the same address, say). Pods here still use our subnet. (Our subnet
    // was picked at random: the planted one must be another.)
    let planted = if ours.starts_with("10.244.77.") {
        78
    } else {
        77
    };
    let key = format!("/coreos.com/network/subnets/10.244.{planted}.0-24");
    n.etcdctl(&["del", "--prefix", "/coreos.com/network/subnets/"]);
    n.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"10.0.0.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:77"}}"#,
    ]);
    n.start(&[]);
    n.wait_ready();
    let env = std::fs::read_to_string(n.subnet_env()).unwrap();
    assert!(
        env.contains(&format!("FLANNEL_SUBNET={ours}")),
        "{env}\n{}",
        n.log()
    );
    let loud = n
        .log()
        .lines()
        .any(|l| l.contains("ERROR") && l.contains(&key));
    assert!(loud, "the planted lease is named loudly:\n{}", n.log());
    // The planted lease is left alone (it is not ours to delete).
    assert!(!n.etcdctl(&["get", &key]).is_empty());
}

#[test]
fn a_config_with_long_non_ascii_text_in_a_wrong_typed_value_crashes_nothing() {
    if common::skip_without_root() {
        return;
    }
    let bad = format!(
        r#"{{"Network":"10.244.0.0/16","EnableIPv6":"{}","Backend":{{"Type":"vxlan"}}}}"#,
        "é".repeat(40)
    );
    let mut n = Node::new("na");
    n.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    n.start(&["--iptables-resync=1", "--kernel-resync=1"]);
    n.wait_ready();
    // The config is re-read on every resync: one bad write reaches every node.
    n.etcdctl(&["put", "/coreos.com/network/config", &bad]);
    let said = eventually(Duration::from_secs(5), || {
        n.log()
            .contains("it is now invalid (EnableIPv6: expected true or false")
    });
    assert!(said.is_some(), "{}", n.log());
    assert!(n.flanneld_running(), "{}", n.log());
    // At start it is waited on, not a crash.
    n.stop();
    n.start(&[]);
    let waits = eventually(Duration::from_secs(5), || {
        n.log()
            .contains("invalid network config at /coreos.com/network/config: EnableIPv6")
    });
    assert!(waits.is_some(), "{}", n.log());
    assert!(n.flanneld_running());
}

#[test]
fn host_gw_lease_events_are_applied_without_a_full_pass() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("hd");
    n.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    ]);
    n.start(&["-v=2"]);
    n.wait_ready();
    let full_passes = |n: &Node| n.log().lines().filter(|l| l.contains("full pass")).count();
    // The watch's first listing is a snapshot: one full pass for it.
    let t = Duration::from_secs(5);
    assert!(eventually(t, || n.log().contains("full pass trigger=Lease")).is_some());
    let before = full_passes(&n);
    // A peer's subnet, not the one we picked at random for ourselves.
    let env = std::fs::read_to_string(n.subnet_env()).unwrap();
    let third = if env.contains("FLANNEL_SUBNET=10.244.200.") {
        201
    } else {
        200
    };
    let key = format!("/coreos.com/network/subnets/10.244.{third}.0-24");
    let key = key.as_str();
    let dst = format!("10.244.{third}.0/24");
    n.etcdctl(&[
        "put",
        key,
        r#"{"PublicIP":"10.0.0.60","BackendType":"host-gw"}"#,
    ]);
    let route = || n.exec("ip", &["route", "show", &dst]);
    assert!(eventually(t, || route().contains("via 10.0.0.60 dev eth0 proto 252")).is_some());
    n.etcdctl(&[
        "put",
        key,
        r#"{"PublicIP":"10.0.0.61","BackendType":"host-gw"}"#,
    ]);
    assert!(
        eventually(t, || route().contains("via 10.0.0.61")).is_some(),
        "{}",
        route()
    );
    n.etcdctl(&["del", key]);
    assert!(
        eventually(t, || route().is_empty()).is_some(),
        "{}",
        route()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(full_passes(&n), before, "{}", n.log());
    assert!(n.log().contains("applied lease changes"));
}

//! Golden tests: after flanneld starts, the kernel's own listings (`iptables -S`, `ip6tables -S`,
//! `nft list table`) equal upstream's expected listings (flannel `e2e/rules.go`).

use crate::common;

use common::{eventually, Node};
use std::time::Duration;

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56","Backend":{"Type":"vxlan"}}"#;

fn nets(n: &Node) -> (String, String) {
    let env = std::fs::read_to_string(n.subnet_env()).unwrap();
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} missing:\n{env}\n{}", n.log()))
            .to_string()
    };
    let v4 = get("FLANNEL_SUBNET=").replace(".1/24", ".0/24");
    let v6 = get("FLANNEL_IPV6_SUBNET=").replace("::1/64", "::/64");
    (v4, v6)
}

fn iptables_nat_golden(cluster: &str, pod: &str, mc: &str) -> String {
    format!(
        "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-N FLANNEL-POSTRTG\n\
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s {pod} -d {cluster} -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s {cluster} -d {pod} -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG ! -s {cluster} -d {pod} -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s {cluster} ! -d {mc} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n"
    )
}

fn iptables_filter_golden(cluster: &str) -> String {
    format!(
        "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N FLANNEL-FWD\n\
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
-A FLANNEL-FWD -s {cluster} -m comment --comment \"flanneld forward\" -j ACCEPT\n\
-A FLANNEL-FWD -d {cluster} -m comment --comment \"flanneld forward\" -j ACCEPT\n"
    )
}

fn nft_golden(family: &str, table: &str, ip: &str, cluster: &str, pod: &str, mc: &str) -> String {
    format!(
        "table {family} {table} {{
\tcomment \"rules for {table}\"
\tchain postrtg {{
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\t{ip} saddr {pod} {ip} daddr {cluster} return
\t\t{ip} saddr {cluster} {ip} daddr {pod} return
\t\t{ip} saddr != {pod} {ip} daddr {cluster} return
\t\t{ip} saddr {cluster} {ip} daddr != {mc} masquerade fully-random
\t\t{ip} saddr != {cluster} {ip} daddr {cluster} masquerade fully-random
\t}}

\tchain forward {{
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\t{ip} saddr {cluster} accept
\t\t{ip} daddr {cluster} accept
\t}}
}}
"
    )
}

#[test]
fn iptables_and_ip6tables_listings_match_upstream() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("ipt");
    n.etcdctl(&["put", "/coreos.com/network/config", DUAL]);
    n.start(&["--ip-masq"]);
    n.wait_ready();
    let (v4, v6) = nets(&n);
    assert_eq!(
        n.exec("iptables", &["-t", "nat", "-S"]),
        iptables_nat_golden("10.244.0.0/16", &v4, "224.0.0.0/4")
    );
    assert_eq!(
        n.exec("iptables", &["-S"]),
        iptables_filter_golden("10.244.0.0/16")
    );
    assert_eq!(
        n.exec("ip6tables", &["-t", "nat", "-S"]),
        iptables_nat_golden("fd00:42::/56", &v6, "ff00::/8")
    );
    assert_eq!(
        n.exec("ip6tables", &["-S"]),
        iptables_filter_golden("fd00:42::/56")
    );
    assert!(std::fs::read_to_string(n.subnet_env())
        .unwrap()
        .contains("FLANNEL_IPV6_NETWORK=fd00:42::/56\n"));
    // A clean shutdown keeps the rules (upstream never removes them).
    assert!(n.stop().success());
    assert_eq!(
        n.exec("iptables", &["-t", "nat", "-S"]),
        iptables_nat_golden("10.244.0.0/16", &v4, "224.0.0.0/4")
    );
}

#[test]
fn nftables_listings_match_upstream_and_iptables_leftovers_go() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("nft");
    // First a run in iptables mode, whose chains nftables mode must remove.
    n.etcdctl(&["put", "/coreos.com/network/config", DUAL]);
    n.start(&["--ip-masq"]);
    n.wait_ready();
    assert!(n.stop().success());
    n.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        &DUAL.replace("\"EnableIPv6\"", "\"EnableNFTables\":true,\"EnableIPv6\""),
    ]);
    n.start(&["--ip-masq", "--iptables-resync=1", "--kernel-resync=1"]);
    n.wait_ready();
    let (v4, v6) = nets(&n);
    let golden4 = nft_golden(
        "ip",
        "flannel-ipv4",
        "ip",
        "10.244.0.0/16",
        &v4,
        "224.0.0.0/4",
    );
    let golden6 = nft_golden(
        "ip6",
        "flannel-ipv6",
        "ip6",
        "fd00:42::/56",
        &v6,
        "ff00::/8",
    );
    assert_eq!(
        n.exec("nft", &["list", "table", "ip", "flannel-ipv4"]),
        golden4
    );
    assert_eq!(
        n.exec("nft", &["list", "table", "ip6", "flannel-ipv6"]),
        golden6
    );
    for (bin, table, chain) in [
        ("iptables", "nat", "FLANNEL-POSTRTG"),
        ("iptables", "filter", "FLANNEL-FWD"),
        ("ip6tables", "nat", "FLANNEL-POSTRTG"),
    ] {
        let listing = n.exec(bin, &["-t", table, "-S"]);
        assert!(
            !listing.contains(chain),
            "{bin} {table} still has {chain}:\n{listing}"
        );
    }
    // Unlike upstream, nftables rules are re-checked: a flushed chain comes back.
    n.exec("nft", &["flush", "chain", "ip", "flannel-ipv4", "postrtg"]);
    let back = eventually(Duration::from_secs(5), || {
        n.exec("nft", &["list", "table", "ip", "flannel-ipv4"]) == golden4
    });
    assert!(
        back.is_some(),
        "nftables rules not restored:\n{}",
        n.exec("nft", &["list", "table", "ip", "flannel-ipv4"])
    );

    // Back to iptables mode: the nftables tables go.
    assert!(n.stop().success());
    n.etcdctl(&["put", "/coreos.com/network/config", DUAL]);
    n.start(&["--ip-masq"]);
    n.wait_ready();
    assert_eq!(
        n.exec("nft", &["list", "tables"])
            .lines()
            .filter(|l| l.contains("flannel"))
            .count(),
        0,
        "{}",
        n.exec("nft", &["list", "tables"])
    );
    assert_eq!(
        n.exec("iptables", &["-t", "nat", "-S"]),
        iptables_nat_golden("10.244.0.0/16", &v4, "224.0.0.0/4")
    );
}

#[test]
fn old_network_rules_are_recycled_and_random_fully_can_be_disabled() {
    if common::skip_without_root() {
        return;
    }
    let mut n = Node::new("rcy");
    n.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    n.start(&["--ip-masq"]);
    n.wait_ready();
    assert!(n.stop().success());
    // The cluster network changes: the restarted node gets a subnet in the new network, and
    // the masquerade rules for the old network and subnet must not stay behind.
    n.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.250.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    n.start(&["--ip-masq", "--ip-masq-fully-random-disable"]);
    n.wait_ready();
    let env = std::fs::read_to_string(n.subnet_env()).unwrap();
    let pod = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .replace(".1/24", ".0/24");
    assert!(pod.starts_with("10.250."), "{env}");
    let want =
        iptables_nat_golden("10.250.0.0/16", &pod, "224.0.0.0/4").replace(" --random-fully", "");
    assert_eq!(n.exec("iptables", &["-t", "nat", "-S"]), want);
}

//! Masquerade and forward rules as data (upstream `pkg/trafficmngr/iptables`), and the
//! `iptables-restore --noflush` payload that installs them.

use ipnet::IpNet;

pub const MASQ_COMMENT: &str = "flanneld masq";
pub const FORWARD_COMMENT: &str = "flanneld forward";
pub const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FWD_CHAIN: &str = "FLANNEL-FWD";

/// One rule: table, chain, and the arguments after `-A <chain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub args: Vec<String>,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, args: &[&str]) -> Self {
        Self {
            table,
            chain,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The rule as `iptables -S` prints it and as a restore line: `-A CHAIN args`, with
    /// arguments containing spaces in double quotes.
    pub fn line(&self, op: &str) -> String {
        let mut s = format!("{op} {}", self.chain);
        for a in &self.args {
            if a.contains(' ') {
                s += &format!(" \"{a}\"");
            } else {
                s += &format!(" {a}");
            }
        }
        s
    }
}

/// Multicast never gets masqueraded: 224.0.0.0/4, or ff00::/8 for IPv6.
pub fn multicast(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    }
}

/// The masquerade rules of one family: `cluster` = config (IPv6)Network, `pod` = own lease subnet.
pub fn masq_rules(cluster: IpNet, pod: IpNet, random_fully: bool) -> Vec<Rule> {
    let (c, p) = (cluster.to_string(), pod.to_string());
    let mc = multicast(&cluster);
    let cm = ["-m", "comment", "--comment", MASQ_COMMENT];
    let mut masq = vec!["-j", "MASQUERADE"];
    if random_fully {
        masq.push("--random-fully");
    }
    let rule = |parts: &[&[&str]]| {
        let args: Vec<&str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        Rule::new("nat", POSTRTG_CHAIN, &args)
    };
    vec![
        Rule::new(
            "nat",
            "POSTROUTING",
            &[&cm[..], &["-j", POSTRTG_CHAIN]].concat(),
        ),
        rule(&[
            &["-m", "mark", "--mark", "0x4000/0x4000"],
            &cm,
            &["-j", "RETURN"],
        ]),
        rule(&[&["-s", &p, "-d", &c], &cm, &["-j", "RETURN"]]),
        rule(&[&["-s", &c, "-d", &p], &cm, &["-j", "RETURN"]]),
        rule(&[&["!", "-s", &c, "-d", &p], &cm, &["-j", "RETURN"]]),
        rule(&[&["-s", &c, "!", "-d", mc], &cm, &masq]),
        rule(&[&["!", "-s", &c, "-d", &c], &cm, &masq]),
    ]
}

/// The forward-accept rules of one family.
pub fn forward_rules(cluster: IpNet) -> Vec<Rule> {
    let c = cluster.to_string();
    let cm = ["-m", "comment", "--comment", FORWARD_COMMENT];
    vec![
        Rule::new("filter", "FORWARD", &[&cm[..], &["-j", FWD_CHAIN]].concat()),
        Rule::new(
            "filter",
            FWD_CHAIN,
            &[&["-s", c.as_str()][..], &cm, &["-j", "ACCEPT"]].concat(),
        ),
        Rule::new(
            "filter",
            FWD_CHAIN,
            &[&["-d", c.as_str()][..], &cm, &["-j", "ACCEPT"]].concat(),
        ),
    ]
}

/// The `iptables-restore --noflush` input for one table: for each rule a `-D` line when it
/// already exists (so re-running moves it back into order) and the `-A` line.
pub fn restore_payload(table: &str, rules: &[(&Rule, bool)]) -> String {
    let mut s = format!("*{table}\n");
    for (r, exists) in rules.iter().filter(|(r, _)| r.table == table) {
        if *exists {
            s += &r.line("-D");
            s.push('\n');
        }
        s += &r.line("-A");
        s.push('\n');
    }
    s += "COMMIT\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masq_rules_match_upstream_listing() {
        let rules = masq_rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
            true,
        );
        let lines: Vec<String> = rules.iter().map(|r| r.line("-A")).collect();
        assert_eq!(
            lines,
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
    }

    #[test]
    fn ipv6_masq_uses_ff00_and_no_random_fully_when_unsupported() {
        let rules = masq_rules(
            "fd00:42::/56".parse().unwrap(),
            "fd00:42:0:1::/64".parse().unwrap(),
            false,
        );
        assert_eq!(
            rules[5].line("-A"),
            r#"-A FLANNEL-POSTRTG -s fd00:42::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE"#
        );
    }

    #[test]
    fn forward_rules_and_restore_payload() {
        let rules = forward_rules("10.244.0.0/16".parse().unwrap());
        let with: Vec<(&Rule, bool)> = rules.iter().enumerate().map(|(i, r)| (r, i == 1)).collect();
        assert_eq!(
            restore_payload("filter", &with),
            "*filter\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -D FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             COMMIT\n"
        );
        assert_eq!(restore_payload("nat", &with), "*nat\nCOMMIT\n");
    }
}

//! The `EnableNFTables` rule sets (upstream `pkg/trafficmngr/nftables`): tables `ip flannel-ipv4`
//! and `ip6 flannel-ipv6`, a masquerade chain and a forward chain, as an `nft -f` transaction
//! and as the listing `nft list table` prints for them.

use ipnet::IpNet;

/// What one family's table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftFamily {
    pub v6: bool,
    /// `(cluster network, own subnet, fully-random)` when masquerading (`--ip-masq`).
    pub masq: Option<(IpNet, IpNet, bool)>,
    /// The cluster network when forward rules are on (`--iptables-forward-rules`).
    pub forward: Option<IpNet>,
}

pub const POSTRTG_COMMENT: &str = "chain to manage traffic masquerading by flannel";
pub const FORWARD_COMMENT: &str = "chain to accept flannel traffic";

impl NftFamily {
    pub fn family(&self) -> &'static str {
        if self.v6 {
            "ip6"
        } else {
            "ip"
        }
    }

    pub fn table(&self) -> &'static str {
        if self.v6 {
            "flannel-ipv6"
        } else {
            "flannel-ipv4"
        }
    }

    fn masq_rules(&self) -> Vec<String> {
        let Some((c, p, fully)) = self.masq else {
            return Vec::new();
        };
        let ip = self.family();
        let mc = crate::iptables::multicast(&c);
        let fr = if fully { " fully-random" } else { "" };
        vec![
            "meta mark 0x00004000 return".to_string(),
            format!("{ip} saddr {p} {ip} daddr {c} return"),
            format!("{ip} saddr {c} {ip} daddr {p} return"),
            format!("{ip} saddr != {p} {ip} daddr {c} return"),
            format!("{ip} saddr {c} {ip} daddr != {mc} masquerade{fr}"),
            format!("{ip} saddr != {c} {ip} daddr {c} masquerade{fr}"),
        ]
    }

    fn forward_rules(&self) -> Vec<String> {
        let Some(c) = self.forward else {
            return Vec::new();
        };
        let ip = self.family();
        vec![
            format!("{ip} saddr {c} accept"),
            format!("{ip} daddr {c} accept"),
        ]
    }

    /// One `nft -f` transaction: create the table and chains, flush the chains, add the rules.
    /// Applying it again gives the same result.
    pub fn script(&self) -> String {
        let (f, t) = (self.family(), self.table());
        let mut s = format!("add table {f} {t} {{ comment \"rules for {t}\" ; }}\n");
        let chains = [
            (
                "postrtg",
                POSTRTG_COMMENT,
                "type nat hook postrouting priority srcnat",
                self.masq_rules(),
                self.masq.is_some(),
            ),
            (
                "forward",
                FORWARD_COMMENT,
                "type filter hook forward priority filter",
                self.forward_rules(),
                self.forward.is_some(),
            ),
        ];
        for (name, comment, hook, rules, on) in chains {
            if !on {
                // A chain left from a run with the option on goes away.
                s += &format!("add chain {f} {t} {name}\ndelete chain {f} {t} {name}\n");
                continue;
            }
            s += &format!(
                "add chain {f} {t} {name} {{ comment \"{comment}\" ; {hook} ; policy accept ; }}\n"
            );
            s += &format!("flush chain {f} {t} {name}\n");
            for r in rules {
                s += &format!("add rule {f} {t} {name} {r}\n");
            }
        }
        s
    }

    /// Exactly what `nft list table <family> <table>` prints when the table is as it should be.
    pub fn listing(&self) -> String {
        let (f, t) = (self.family(), self.table());
        let mut chains = Vec::new();
        if self.masq.is_some() {
            chains.push((
                "postrtg",
                POSTRTG_COMMENT,
                "type nat hook postrouting priority srcnat; policy accept;",
                self.masq_rules(),
            ));
        }
        if self.forward.is_some() {
            chains.push((
                "forward",
                FORWARD_COMMENT,
                "type filter hook forward priority filter; policy accept;",
                self.forward_rules(),
            ));
        }
        let body: Vec<String> = chains
            .into_iter()
            .map(|(name, comment, hook, rules)| {
                let mut c = format!("\tchain {name} {{\n\t\tcomment \"{comment}\"\n\t\t{hook}\n");
                for r in rules {
                    c += &format!("\t\t{r}\n");
                }
                c + "\t}\n"
            })
            .collect();
        format!(
            "table {f} {t} {{\n\tcomment \"rules for {t}\"\n{}}}\n",
            body.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> NftFamily {
        NftFamily {
            v6: false,
            masq: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
                true,
            )),
            forward: Some("10.244.0.0/16".parse().unwrap()),
        }
    }

    #[test]
    fn script_is_one_idempotent_transaction() {
        let s = v4().script();
        assert!(
            s.starts_with("add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n")
        );
        assert!(s.contains("flush chain ip flannel-ipv4 postrtg\nadd rule ip flannel-ipv4 postrtg meta mark 0x00004000 return\n"));
        assert!(s.contains("add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n"));
        assert!(s.ends_with("add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n"));
        let off = NftFamily { masq: None, ..v4() }.script();
        assert!(off.contains("delete chain ip flannel-ipv4 postrtg"));
    }

    #[test]
    fn ipv6_uses_ip6_and_ff00() {
        let f = NftFamily {
            v6: true,
            masq: Some((
                "fd00::/56".parse().unwrap(),
                "fd00:0:0:1::/64".parse().unwrap(),
                false,
            )),
            forward: None,
        };
        let l = f.listing();
        assert!(l.starts_with("table ip6 flannel-ipv6 {\n"));
        assert!(l.contains("\t\tip6 saddr fd00::/56 ip6 daddr != ff00::/8 masquerade\n"));
    }
}

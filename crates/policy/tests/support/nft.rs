//! A small interpreter of the nftables scripts the compiler writes: it reads the script's
//! text (not the compiler's types) and judges a new packet by the table's base chains, as
//! the kernel would on the forward hook. It knows only the expressions the compiler emits,
//! and fails loudly on anything else.

use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp` or `sctp`.
    pub proto: &'static str,
    pub dport: u16,
}

#[derive(Default)]
pub struct Table {
    /// name -> (priority when a base chain, rules)
    chains: HashMap<String, (Option<i32>, Vec<String>)>,
    sets: HashMap<String, Vec<String>>,
}

enum Act {
    Accept,
    Drop,
    Jump(String),
}

fn words(s: &str) -> Vec<String> {
    // `{ a, b }` is one word.
    let mut out = Vec::new();
    let mut it = s.split_whitespace().peekable();
    while let Some(w) = it.next() {
        if w == "{" {
            let mut g = Vec::new();
            for x in it.by_ref() {
                if x == "}" {
                    break;
                }
                g.push(x.trim_end_matches(','));
            }
            out.push(format!("{{{}}}", g.join(",")));
        } else {
            out.push(w.to_string());
        }
    }
    out
}

fn in_net(ip: IpAddr, net: &str) -> bool {
    let (addr, len) = net.split_once('/').unwrap_or((net, ""));
    let Ok(a) = addr.parse::<IpAddr>() else {
        panic!("not an address: {net}")
    };
    let bits = |x: IpAddr| -> (u128, u32) {
        match x {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    if ip.is_ipv4() != a.is_ipv4() {
        return false;
    }
    let ((x, w), (y, _)) = (bits(ip), bits(a));
    let len: u32 = if len.is_empty() {
        w
    } else {
        len.parse().expect("prefix length")
    };
    if len == 0 {
        return true;
    }
    (x >> (w - len)) == (y >> (w - len))
}

impl Table {
    pub fn parse(script: &str) -> Self {
        let mut t = Table::default();
        let pre = "inet flannel-policy ";
        for line in script.lines() {
            if let Some(rest) = line
                .strip_prefix("add chain ")
                .and_then(|r| r.strip_prefix(pre))
            {
                let (name, decl) = rest.split_once(' ').unwrap_or((rest, ""));
                let prio = decl.split_once("priority ").map(|(_, p)| {
                    let p = p.split(';').next().unwrap_or("").trim();
                    match p {
                        "filter" => 0,
                        "filter - 1" => -1,
                        other => panic!("priority {other}"),
                    }
                });
                t.chains.insert(name.into(), (prio, Vec::new()));
            } else if let Some(rest) = line
                .strip_prefix("add set ")
                .or_else(|| line.strip_prefix("add map "))
                .and_then(|r| r.strip_prefix(pre))
            {
                let name = rest.split(' ').next().unwrap_or("");
                t.sets.insert(name.into(), Vec::new());
            } else if let Some(rest) = line
                .strip_prefix("add element ")
                .and_then(|r| r.strip_prefix(pre))
            {
                let (name, elems) = rest.split_once(' ').expect("element list");
                let elems = elems.trim().trim_start_matches('{').trim_end_matches('}');
                let set = t
                    .sets
                    .get_mut(name)
                    .unwrap_or_else(|| panic!("no set {name}"));
                set.extend(elems.split(", ").map(|e| e.trim().to_string()));
            } else if let Some(rest) = line
                .strip_prefix("add rule ")
                .and_then(|r| r.strip_prefix(pre))
            {
                let (chain, rule) = rest.split_once(' ').expect("rule");
                let rule = rule.split(" comment \"").next().unwrap_or(rule);
                t.chains
                    .get_mut(chain)
                    .unwrap_or_else(|| panic!("no chain {chain}"))
                    .1
                    .push(rule.into());
            } else if line.starts_with("add table ") || line.is_empty() {
            } else {
                panic!("the interpreter does not know: {line}");
            }
        }
        t
    }

    fn addr(p: &Packet, field: &str) -> IpAddr {
        match field {
            "saddr" => p.src,
            "daddr" => p.dst,
            f => panic!("field {f}"),
        }
    }

    /// `None`: a match failed (next rule).
    fn rule(&self, r: &str, p: &Packet) -> Option<Act> {
        let w = words(r);
        let mut i = 0;
        while i < w.len() {
            match w[i].as_str() {
                "ct" => {
                    assert_eq!(w[i + 1], "state");
                    if !w[i + 2].split(',').any(|s| s == "new") {
                        return None;
                    }
                    i += 3;
                }
                fam @ ("ip" | "ip6") => {
                    let a = Self::addr(p, &w[i + 1]);
                    if a.is_ipv4() != (fam == "ip") {
                        return None;
                    }
                    match w[i + 2].as_str() {
                        "vmap" => {
                            let m = &self.sets[w[i + 3].trim_start_matches('@')];
                            let key = format!("{a} : jump ");
                            return m
                                .iter()
                                .find_map(|e| e.strip_prefix(&key))
                                .map(|c| Act::Jump(c.into()));
                        }
                        "." => {
                            // ip daddr . meta l4proto . th dport @set
                            assert_eq!(&w[i + 3..i + 8], ["meta", "l4proto", ".", "th", "dport"]);
                            let key = format!("{a} . {} . {}", p.proto, p.dport);
                            if !self.sets[w[i + 8].trim_start_matches('@')].contains(&key) {
                                return None;
                            }
                            i += 9;
                        }
                        "!=" => {
                            let g = w[i + 3].trim_start_matches('{').trim_end_matches('}');
                            if g.split(',').any(|n| in_net(a, n)) {
                                return None;
                            }
                            i += 4;
                        }
                        x if x.starts_with('@') => {
                            if !self.sets[&x[1..]]
                                .iter()
                                .any(|e| e.parse::<IpAddr>().ok() == Some(a))
                            {
                                return None;
                            }
                            i += 3;
                        }
                        net => {
                            if !in_net(a, net) {
                                return None;
                            }
                            i += 3;
                        }
                    }
                }
                "meta" => {
                    assert_eq!(w[i + 1], "l4proto");
                    if w[i + 2] != p.proto {
                        return None;
                    }
                    i += 3;
                }
                "th" => {
                    assert_eq!(w[i + 1], "dport");
                    let (a, b) = w[i + 2].split_once('-').unwrap_or((&w[i + 2], &w[i + 2]));
                    let (a, b): (u16, u16) = (a.parse().expect("port"), b.parse().expect("port"));
                    if p.dport < a || p.dport > b {
                        return None;
                    }
                    i += 3;
                }
                "counter" => i += 1,
                // Neighbour discovery: the interpreter's packets are TCP, UDP or SCTP.
                "icmpv6" => return None,
                "accept" => return Some(Act::Accept),
                "drop" => return Some(Act::Drop),
                "jump" => return Some(Act::Jump(w[i + 1].clone())),
                other => panic!("the interpreter does not know {other:?} in {r:?}"),
            }
        }
        panic!("a rule without a verdict: {r}")
    }

    /// `Some(true)` accept, `Some(false)` drop, `None` fell off the end.
    fn chain(&self, name: &str, p: &Packet) -> Option<bool> {
        let (_, rules) = self
            .chains
            .get(name)
            .unwrap_or_else(|| panic!("no chain {name}"));
        for r in rules {
            match self.rule(r, p) {
                None => {}
                Some(Act::Accept) => return Some(true),
                Some(Act::Drop) => return Some(false),
                Some(Act::Jump(c)) => {
                    if let Some(v) = self.chain(&c, p) {
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    /// Whether a new packet passes every base chain (each ends in `policy accept`).
    pub fn passes(&self, p: &Packet) -> bool {
        let mut bases: Vec<(&i32, &String)> = self
            .chains
            .iter()
            .filter_map(|(n, (prio, _))| prio.as_ref().map(|pr| (pr, n)))
            .collect();
        bases.sort();
        bases.iter().all(|(_, n)| self.chain(n, p) != Some(false))
    }
}

//! The policy table as data: chains of rules, sets and verdict maps. [`Ruleset::script`]
//! writes it from nothing; [`Ruleset::diff`] writes the one transaction that turns the table
//! the kernel has ([`Observed`], read from `nft -j list table`) into it.
//!
//! Every rule carries a comment that is a digest of its text, so the kernel's copy is
//! compared rule by rule without parsing nftables' own rendering of expressions back.

use crate::{FAMILY, TABLE};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// A base chain's declaration (`type filter hook forward priority filter ; policy
    /// accept ;`); `None` for a chain only jumped to.
    pub base: Option<String>,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// `type ipv4_addr ;`; a map's `type ipv4_addr : verdict ;`.
    pub decl: String,
    pub map: bool,
    /// Elements as nftables prints them (`10.0.0.1`, `10.0.0.1 . tcp . 80`, `10.0.0.1 : jump x`).
    pub elems: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
}

/// The policy table as the kernel has it: each chain's rules by their digests, each set's
/// elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub chains: BTreeMap<String, Vec<String>>,
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

/// A rule's identity: FNV-1a of its text, as 16 hex digits.
pub fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn at() -> String {
    format!("{FAMILY} {TABLE}")
}

fn add_chain(s: &mut String, name: &str, c: &Chain) {
    let t = at();
    match &c.base {
        Some(b) => {
            let _ = writeln!(s, "add chain {t} {name} {{ {b} }}");
        }
        None => {
            let _ = writeln!(s, "add chain {t} {name}");
        }
    }
}

fn add_rules(s: &mut String, name: &str, c: &Chain) {
    let t = at();
    for r in &c.rules {
        let _ = writeln!(s, "add rule {t} {name} {r} comment \"{}\"", digest(r));
    }
}

fn add_set(s: &mut String, name: &str, set: &Set) {
    let kw = if set.map { "map" } else { "set" };
    let _ = writeln!(s, "add {kw} {} {name} {{ {} }}", at(), set.decl);
}

fn elements<'a>(s: &mut String, verb: &str, name: &str, elems: impl Iterator<Item = &'a String>) {
    // Chunks keep each command's line short; they are still one transaction.
    let elems: Vec<&String> = elems.collect();
    for chunk in elems.chunks(256) {
        let list: Vec<&str> = chunk.iter().map(|e| e.as_str()).collect();
        let _ = writeln!(
            s,
            "{verb} element {} {name} {{ {} }}",
            at(),
            list.join(", ")
        );
    }
}

impl Ruleset {
    /// One transaction that makes the table from nothing.
    pub fn script(&self) -> String {
        let mut s = format!("add table {}\n", at());
        for (n, set) in &self.sets {
            add_set(&mut s, n, set);
        }
        for (n, c) in &self.chains {
            add_chain(&mut s, n, c);
        }
        for (n, set) in &self.sets {
            elements(&mut s, "add", n, set.elems.iter());
        }
        for (n, c) in &self.chains {
            add_rules(&mut s, n, c);
        }
        s
    }

    /// Every rule's digest per chain and every set's elements: what [`Observed`] reads back
    /// when the kernel's table is this one.
    pub fn observed(&self) -> Observed {
        Observed {
            chains: self
                .chains
                .iter()
                .map(|(n, c)| (n.clone(), c.rules.iter().map(|r| digest(r)).collect()))
                .collect(),
            sets: self
                .sets
                .iter()
                .map(|(n, s)| (n.clone(), s.elems.clone()))
                .collect(),
        }
    }

    /// The one transaction that turns `now` into this ruleset, `None` when they agree.
    /// `now` is `None` when the table does not exist. Order matters inside a transaction:
    /// sets and chains are made before anything refers to them, and chains and sets are
    /// deleted only after the rules and map elements that refer to them are gone.
    pub fn diff(&self, now: Option<&Observed>) -> Option<String> {
        let Some(now) = now else {
            return Some(self.script());
        };
        let t = at();
        let mut s = String::new();
        for (n, set) in &self.sets {
            if !now.sets.contains_key(n) {
                add_set(&mut s, n, set);
            }
        }
        for (n, c) in &self.chains {
            if !now.chains.contains_key(n) {
                add_chain(&mut s, n, c);
            }
        }
        let empty = BTreeSet::new();
        for (n, set) in &self.sets {
            let have = now.sets.get(n).unwrap_or(&empty);
            elements(&mut s, "delete", n, have.difference(&set.elems));
            elements(&mut s, "add", n, set.elems.difference(have));
        }
        for (n, c) in &self.chains {
            let want: Vec<String> = c.rules.iter().map(|r| digest(r)).collect();
            match now.chains.get(n) {
                Some(have) if *have == want => {}
                Some(_) => {
                    let _ = writeln!(s, "flush chain {t} {n}");
                    add_rules(&mut s, n, c);
                }
                None => add_rules(&mut s, n, c),
            }
        }
        // Gone: elements of sets that go entirely need no deletion, but maps that stay had
        // their elements pointing at gone chains removed above.
        let gone: Vec<&String> = now
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for n in &gone {
            let _ = writeln!(s, "flush chain {t} {n}");
        }
        for n in now.sets.keys().filter(|n| !self.sets.contains_key(*n)) {
            let _ = writeln!(s, "delete set {t} {n}");
        }
        for n in &gone {
            let _ = writeln!(s, "delete chain {t} {n}");
        }
        (!s.is_empty()).then_some(s)
    }

    /// How many rules and set elements it holds (metrics, logs).
    pub fn size(&self) -> (usize, usize) {
        (
            self.chains.values().map(|c| c.rules.len()).sum(),
            self.sets.values().map(|s| s.elems.len()).sum(),
        )
    }
}

fn element(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(kv) if kv.len() == 2 => format!("{} : {}", element(&kv[0]), verdict(&kv[1])),
        Value::Object(o) => {
            if let Some(parts) = o.get("concat").and_then(Value::as_array) {
                parts.iter().map(element).collect::<Vec<_>>().join(" . ")
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", element(&p["addr"]), p["len"])
            } else if let Some(r) = o.get("range").and_then(Value::as_array) {
                let part = |i: usize| r.get(i).map(element).unwrap_or_default();
                format!("{}-{}", part(0), part(1))
            } else if let Some(e) = o.get("elem") {
                element(&e["val"])
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn verdict(v: &Value) -> String {
    match v {
        Value::Object(o) => match o.iter().next() {
            Some((k, t)) => format!("{k} {}", t["target"].as_str().unwrap_or("")),
            None => String::new(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Observed {
    /// From `nft -j list table inet flannel-policy`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("nft -j output: {e}"))?;
        let items = v["nftables"]
            .as_array()
            .ok_or("nft -j output without an \"nftables\" list")?;
        let mut o = Observed::default();
        for item in items {
            if let Some(c) = item.get("chain") {
                if let Some(n) = c["name"].as_str() {
                    o.chains.entry(n.to_string()).or_default();
                }
            } else if let Some(r) = item.get("rule") {
                if let Some(n) = r["chain"].as_str() {
                    let comment = r["comment"].as_str().unwrap_or("").to_string();
                    o.chains.entry(n.to_string()).or_default().push(comment);
                }
            } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
                if let Some(n) = s["name"].as_str() {
                    let elems = s["elem"]
                        .as_array()
                        .map(|es| es.iter().map(element).collect())
                        .unwrap_or_default();
                    o.sets.insert(n.to_string(), elems);
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests;

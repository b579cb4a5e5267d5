//! An in-memory stand-in for the firewall behind [`TrafficManager`], for tests as any user.
//! It keeps rules per table (several tables at once, as iptables' nat and filter, or an
//! nftables table of flanneld's beside another tool's), installs the rules it was built with,
//! records every request, and lets a test delete or add rules behind the daemon's back.

use crate::firewall::{FirewallError, TrafficManager};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Table name → its rules, as text.
pub type Tables = BTreeMap<String, BTreeSet<String>>;

/// One request, as the daemon made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwCall {
    Setup,
    Resync,
    Missing,
}

#[derive(Default)]
pub struct FakeFirewallState {
    /// What the kernel holds now.
    pub tables: Tables,
    /// What this manager installs.
    pub desired: Tables,
    pub calls: Vec<FwCall>,
    /// Every request fails while set (the tool missing, the kernel refusing).
    pub broken: bool,
}

/// The fake firewall; clones share state.
#[derive(Clone, Default)]
pub struct FakeFirewall {
    state: Arc<Mutex<FakeFirewallState>>,
}

impl FakeFirewall {
    /// A manager that installs `desired`: (table, rule) pairs.
    pub fn new<'a>(desired: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let f = Self::default();
        f.with(|s| {
            for (t, r) in desired {
                s.desired.entry(t.into()).or_default().insert(r.into());
            }
        });
        f
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeFirewallState) -> R) -> R {
        f(&mut self.lock())
    }

    pub fn take_calls(&self) -> Vec<FwCall> {
        std::mem::take(&mut self.lock().calls)
    }

    fn lock(&self) -> MutexGuard<'_, FakeFirewallState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run<T>(
        &self,
        call: FwCall,
        f: impl FnOnce(&mut FakeFirewallState) -> T,
    ) -> Result<T, FirewallError> {
        let mut s = self.lock();
        s.calls.push(call);
        if s.broken {
            return Err(FirewallError::Other(format!(
                "{call:?}: the fake firewall is broken"
            )));
        }
        Ok(f(&mut s))
    }
}

impl FakeFirewallState {
    /// Desired rules the kernel lacks: (table, rule).
    fn absent(&self) -> Vec<(String, String)> {
        self.desired
            .iter()
            .flat_map(|(t, rules)| rules.iter().map(move |r| (t.clone(), r.clone())))
            .filter(|(t, r)| !self.tables.get(t).is_some_and(|have| have.contains(r)))
            .collect()
    }

    /// Installs every desired rule; other tables' and other rules are left alone.
    fn install(&mut self) {
        for (t, rules) in &self.desired {
            self.tables
                .entry(t.clone())
                .or_default()
                .extend(rules.iter().cloned());
        }
    }
}

impl TrafficManager for FakeFirewall {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn setup(&self) -> Result<(), FirewallError> {
        self.run(FwCall::Setup, FakeFirewallState::install)
    }

    fn resync(&self) -> Result<bool, FirewallError> {
        self.run(FwCall::Resync, |s| {
            let missing = !s.absent().is_empty();
            if missing {
                s.install();
            }
            missing
        })
    }

    fn missing(&self) -> Result<Vec<(String, String)>, FirewallError> {
        self.run(FwCall::Missing, |s| {
            s.absent()
                .into_iter()
                .map(|(t, r)| (format!("{t}: {r} is missing"), format!("add {t} {r}")))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_of_several_tables_are_kept_and_put_back_without_touching_others() {
        let fw = FakeFirewall::new([
            ("nat", "masquerade"),
            ("filter", "forward"),
            ("policy", "deny"),
        ]);
        fw.setup().unwrap();
        fw.with(|s| {
            s.tables
                .entry("someone-else".into())
                .or_default()
                .insert("theirs".into());
            s.tables.get_mut("filter").unwrap().clear();
        });
        assert_eq!(fw.missing().unwrap().len(), 1);
        assert!(fw.resync().unwrap(), "a rule was missing");
        assert!(!fw.resync().unwrap(), "nothing missing any more");
        fw.with(|s| {
            assert_eq!(s.tables.len(), 4);
            assert!(s.tables["someone-else"].contains("theirs"));
        });
        fw.with(|s| s.broken = true);
        assert!(fw.resync().is_err());
        assert_eq!(
            fw.take_calls(),
            [
                FwCall::Setup,
                FwCall::Missing,
                FwCall::Resync,
                FwCall::Resync,
                FwCall::Resync
            ]
        );
    }
}

//! The traffic manager: masquerade and forward rules in iptables (default) or nftables
//! (`EnableNFTables`), behind one trait. Calls block (they run binaries); async callers use
//! `spawn_blocking`.

use crate::iptables::{Iptables, IptablesError};
use crate::nftables::{self, NftError};
use flannel_core::iptables::{forward_rules, masq_rules, Rule, FWD_CHAIN, POSTRTG_CHAIN};
use flannel_core::nftables::NftFamily;
use ipnet::IpNet;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    #[error(transparent)]
    Nft(#[from] NftError),
    /// Any other manager's failure (the fake's).
    #[error("{0}")]
    Other(String),
}

/// One address family's networks: the cluster network and this node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyNets {
    pub cluster: IpNet,
    pub pod: IpNet,
}

impl FamilyNets {
    /// Each family's (cluster network, pod subnet) that is present, IPv4 first.
    pub fn of(
        v4: Option<(ipnet::Ipv4Net, ipnet::Ipv4Net)>,
        v6: Option<(ipnet::Ipv6Net, ipnet::Ipv6Net)>,
    ) -> Vec<Self> {
        let v4 = v4.map(|(c, p)| (IpNet::V4(c), IpNet::V4(p)));
        let v6 = v6.map(|(c, p)| (IpNet::V6(c), IpNet::V6(p)));
        [v4, v6]
            .into_iter()
            .flatten()
            .map(|(cluster, pod)| Self { cluster, pod })
            .collect()
    }

    fn v6(&self) -> bool {
        matches!(self.cluster, IpNet::V6(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Families with a network in the config (IPv4 first).
    pub families: Vec<FamilyNets>,
    pub ip_masq: bool,
    pub forward: bool,
    pub fully_random_disable: bool,
}

pub trait TrafficManager: Send + Sync {
    fn name(&self) -> &'static str;
    /// Removes the other mode's leftovers, then installs every rule.
    fn setup(&self) -> Result<(), FirewallError>;
    /// Re-installs when anything is missing or changed; returns whether it had to.
    fn resync(&self) -> Result<bool, FirewallError>;
    /// What is missing or changed now, each with a shell command that puts it back where it
    /// belongs (`flannelctl doctor`). Reads only.
    fn missing(&self) -> Result<Vec<(String, String)>, FirewallError>;
}

/// A word as the shell reads it back: quoted when it holds anything but safe characters.
pub fn shell_quote(w: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !w.is_empty() && w.chars().all(safe) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// The manager for the config: nftables when `EnableNFTables`, else iptables.
pub fn manager(cfg: &FirewallConfig, nftables: bool) -> Box<dyn TrafficManager> {
    if nftables {
        Box::new(NftablesManager::new(cfg))
    } else {
        Box::new(IptablesManager::new(cfg))
    }
}

pub struct IptablesManager {
    per_family: Vec<(Iptables, Vec<Rule>)>,
}

impl IptablesManager {
    pub fn new(cfg: &FirewallConfig) -> Self {
        let per_family = cfg
            .families
            .iter()
            .map(|f| {
                let ipt = if f.v6() {
                    Iptables::ipv6()
                } else {
                    Iptables::ipv4()
                };
                let random_fully = ipt.has_random_fully() && !cfg.fully_random_disable;
                let mut rules = Vec::new();
                if cfg.ip_masq {
                    rules.extend(masq_rules(f.cluster, f.pod, random_fully));
                }
                if cfg.forward {
                    rules.extend(forward_rules(f.cluster));
                }
                (ipt, rules)
            })
            .collect();
        Self { per_family }
    }

    /// Deletes masquerade rules made for a previous network or subnet (upstream's recycling),
    /// so no stale NAT rule stays behind when the node's subnet changed.
    pub fn recycle(&self, old: &[FamilyNets], now: &[FamilyNets]) {
        for o in old.iter().filter(|o| !now.contains(o)) {
            let Some((ipt, _)) = self
                .per_family
                .iter()
                .find(|(i, _)| (i.binary() == "ip6tables") == o.v6())
            else {
                continue;
            };
            info!(old_network = %o.cluster, old_subnet = %o.pod, "network or subnet changed since the last run; removing old masquerade rules");
            // Both --random-fully variants; the jump rule is shared with the current set.
            let stale: Vec<Rule> = [true, false]
                .into_iter()
                .flat_map(|rf| masq_rules(o.cluster, o.pod, rf))
                .filter(|r| r.chain == POSTRTG_CHAIN)
                .collect();
            if let Err(e) = ipt.delete_existing(&stale) {
                warn!(error = %e, "removing old masquerade rules failed");
            }
        }
    }
}

fn clear_nft_tables() {
    for (f, t) in [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")] {
        if let Err(e) = nftables::delete_table(f, t) {
            warn!(error = %e, "removing the nftables table {f} {t} left by nftables mode failed");
        }
    }
}

impl TrafficManager for IptablesManager {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn setup(&self) -> Result<(), FirewallError> {
        clear_nft_tables();
        for (ipt, rules) in &self.per_family {
            if !rules.is_empty() {
                ipt.apply(rules)?;
            }
        }
        Ok(())
    }

    fn resync(&self) -> Result<bool, FirewallError> {
        let mut fixed = false;
        for (ipt, rules) in &self.per_family {
            if !rules.is_empty() && !ipt.all_present(rules)? {
                warn!(
                    "some flannel {} rules are missing; re-installing them",
                    ipt.binary()
                );
                ipt.apply(rules)?;
                fixed = true;
            }
        }
        Ok(fixed)
    }

    /// Each missing rule, put back at its place: our own chains hold our rules only, in
    /// order, so a rule goes in at its index (earlier missing ones first); a jump from a
    /// built-in chain is appended, as flanneld does. A missing chain is created first.
    fn missing(&self) -> Result<Vec<(String, String)>, FirewallError> {
        let mut out = Vec::new();
        for (ipt, rules) in &self.per_family {
            let bin = ipt.binary();
            let mut made: Vec<(&str, &str)> = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                if ipt.exists(r)? {
                    continue;
                }
                let args: Vec<String> = r.args.iter().map(|a| shell_quote(a)).collect();
                let spec = format!("-t {} {} {}", r.table, r.chain, args.join(" "));
                let own_chain = r.chain.starts_with("FLANNEL");
                let mut fix = String::new();
                if own_chain && !made.contains(&(r.table, r.chain)) {
                    made.push((r.table, r.chain));
                    fix.push_str(&format!(
                        "{{ {bin} -w -t {} -N {} 2>/dev/null || true; }} && ",
                        r.table, r.chain
                    ));
                }
                if own_chain {
                    let pos = rules[..i]
                        .iter()
                        .filter(|o| o.table == r.table && o.chain == r.chain)
                        .count()
                        + 1;
                    fix.push_str(&format!(
                        "{bin} -w -t {} -I {} {pos} {}",
                        r.table,
                        r.chain,
                        args.join(" ")
                    ));
                } else {
                    fix.push_str(&format!(
                        "{bin} -w -t {} -A {} {}",
                        r.table,
                        r.chain,
                        args.join(" ")
                    ));
                }
                out.push((format!("{bin} rule missing: {spec}"), fix));
            }
        }
        Ok(out)
    }
}

pub struct NftablesManager {
    families: Vec<NftFamily>,
}

impl NftablesManager {
    pub fn new(cfg: &FirewallConfig) -> Self {
        let fully = !cfg.fully_random_disable && nftables::supports_fully_random();
        // Both tables always exist in nftables mode, as upstream creates them; a family without
        // a network gets an empty table.
        let families = [false, true]
            .into_iter()
            .map(|v6| {
                let nets = cfg.families.iter().find(|f| f.v6() == v6);
                NftFamily {
                    v6,
                    masq: nets
                        .filter(|_| cfg.ip_masq)
                        .map(|n| (n.cluster, n.pod, fully)),
                    forward: nets.filter(|_| cfg.forward).map(|n| n.cluster),
                }
            })
            .collect();
        Self { families }
    }

    fn apply(&self) -> Result<(), FirewallError> {
        let script: String = self.families.iter().map(NftFamily::script).collect();
        nftables::apply(&script)?;
        Ok(())
    }
}

fn clear_iptables_chains() {
    for ipt in [Iptables::ipv4(), Iptables::ipv6()] {
        for (table, from, chain) in [
            ("nat", "POSTROUTING", POSTRTG_CHAIN),
            ("filter", "FORWARD", FWD_CHAIN),
        ] {
            if let Err(e) = ipt.remove_chain(table, from, chain) {
                warn!(error = %e, "removing {} chain {chain} left by iptables mode failed", ipt.binary());
            }
        }
    }
}

impl TrafficManager for NftablesManager {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn setup(&self) -> Result<(), FirewallError> {
        clear_iptables_chains();
        self.apply()
    }

    fn missing(&self) -> Result<Vec<(String, String)>, FirewallError> {
        let mut out = Vec::new();
        for f in &self.families {
            let have = nftables::list_table(f.family(), f.table())?;
            if have.as_deref() != Some(f.listing().as_str()) {
                out.push((
                    format!(
                        "nftables table {} {} differs from what flanneld installs",
                        f.family(),
                        f.table()
                    ),
                    format!("nft -f - <<'EOF'\n{}EOF", f.script()),
                ));
            }
        }
        Ok(out)
    }

    /// Upstream never re-checks nftables; we compare the kernel's listing with the expected one.
    fn resync(&self) -> Result<bool, FirewallError> {
        for f in &self.families {
            let have = nftables::list_table(f.family(), f.table())?;
            if have.as_deref() != Some(f.listing().as_str()) {
                warn!(
                    table = f.table(),
                    "nftables table differs from what flannel installs; re-applying it"
                );
                self.apply()?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

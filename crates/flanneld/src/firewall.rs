//! Masquerade and forward rules: installed at start, recycled when the network or subnet changed
//! since the previous run, and re-checked every resync period.

use flannel_core::iptables::{forward_rules_v4, masq_rules_v4, Rule};
use flannel_core::subnet_env::PreviousSubnets;
use flannel_net::iptables::Iptables;
use ipnet::Ipv4Net;
use tracing::{info, warn};

pub struct Firewall {
    ipt: Iptables,
    rules: Vec<Rule>,
}

impl Firewall {
    /// Blocking: probes the iptables version. Call from `spawn_blocking`.
    pub fn new(
        ip_masq: bool,
        fully_random_disable: bool,
        forward: bool,
        network: Ipv4Net,
        subnet: Ipv4Net,
    ) -> Self {
        let ipt = Iptables::ipv4();
        let random_fully = ipt.has_random_fully() && !fully_random_disable;
        let mut rules = Vec::new();
        if ip_masq {
            rules.extend(masq_rules_v4(network, subnet, random_fully));
        }
        if forward {
            rules.extend(forward_rules_v4(network));
        }
        Self { ipt, rules }
    }

    /// Removes masquerade rules computed from the previous run's network and subnet when they
    /// differ from the current ones (upstream's recycling), so no stale NAT stays behind.
    pub fn recycle(&self, prev: &PreviousSubnets, network: Ipv4Net, subnet: Ipv4Net) {
        let (Some(pn), Some(ps)) = (prev.network, prev.subnet) else {
            return;
        };
        if pn == network && ps == subnet {
            return;
        }
        info!(old_network = %pn, old_subnet = %ps, "network or subnet changed since the last run; removing old masquerade rules");
        // The jump rule is shared with the new set; only the chain rules are specific.
        let old: Vec<Rule> = masq_rules_v4(pn, ps, true)
            .into_iter()
            .chain(masq_rules_v4(pn, ps, false))
            .filter(|r| r.chain != "POSTROUTING")
            .collect();
        if let Err(e) = self.ipt.delete_existing(&old) {
            warn!(error = %e, "removing old masquerade rules failed");
        }
    }

    pub fn apply(&self) -> Result<(), flannel_net::iptables::IptablesError> {
        if self.rules.is_empty() {
            return Ok(());
        }
        self.ipt.apply(&self.rules)
    }

    /// Re-installs the whole list when any rule is missing. Returns whether it had to.
    pub fn resync(&self) -> Result<bool, flannel_net::iptables::IptablesError> {
        if self.rules.is_empty() || self.ipt.all_present(&self.rules)? {
            return Ok(false);
        }
        warn!("some flannel iptables rules are missing; re-installing them");
        self.ipt.apply(&self.rules)?;
        Ok(true)
    }
}

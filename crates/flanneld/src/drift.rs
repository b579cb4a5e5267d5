//! Things that change under a running flanneld and that it reports instead of silently
//! following or fighting: the network config, and our own lease overwritten by someone else.

use flannel_core::say_once::SayOnce;
use flannel_core::{ConfigError, NetworkConfig};
use flannel_subnet::{LeaseSet, OwnLease, SubnetManager};
use std::time::Instant;
use tracing::{error, info};

/// Compares the config in etcd with the one flanneld started with, once per resync.
pub struct ConfigDrift {
    started: NetworkConfig,
    /// Said once per config text.
    said: SayOnce,
}

impl ConfigDrift {
    pub fn new(started: NetworkConfig) -> Self {
        Self {
            started,
            said: SayOnce::default(),
        }
    }

    /// What is wrong with the config now read compared with the running one, if anything.
    pub fn problem(&self, now: Result<NetworkConfig, ConfigError>) -> Option<String> {
        match now {
            Err(e) => Some(format!("it is now invalid ({e})")),
            Ok(c) if !same(&c, &self.started) => {
                Some("it differs from the config flanneld started with".into())
            }
            Ok(_) => None,
        }
    }

    pub async fn check(&mut self, sm: &impl SubnetManager) {
        let Ok(Some(text)) = sm.get_network_config().await else {
            return;
        };
        match self.problem(sm.parse_config(&text)) {
            Some(p) => {
                if self.said.problem(&text, Instant::now()) {
                    error!(
                        key = %sm.config_location(),
                        "the network config changed while flanneld runs: {p}; flanneld keeps the config it started with (and its routes); restart it to apply the new one"
                    );
                }
            }
            None => {
                if self.said.cleared() {
                    info!(key = %sm.config_location(), "the network config is back to the one flanneld runs with");
                }
            }
        }
    }
}

/// Equal as flannel reads them (backend keys match case-insensitively).
fn same(a: &NetworkConfig, b: &NetworkConfig) -> bool {
    let norm = |c: &NetworkConfig| NetworkConfig {
        backend: flannel_core::json_ci::lowercase_keys(&c.backend),
        ..c.clone()
    };
    norm(a) == norm(b)
}

/// Reports (once per claimant) when the value under our own subnet key is not ours any more.
#[derive(Default)]
pub struct ClaimWatch {
    said: SayOnce,
}

impl ClaimWatch {
    pub fn check(&mut self, own: &OwnLease, leases: &LeaseSet, key: &str) {
        let mine = &own.lease.attrs;
        let theirs = leases.claim(&own.owner).map(|l| &l.attrs);
        match theirs {
            Some(t) if t != mine => {
                let who = t.to_json();
                if self.said.problem(&who, Instant::now()) {
                    error!(
                        key,
                        claimant = %who,
                        "our lease was overwritten by another writer (PublicIP {}): two nodes now claim {}; keeping our kernel state and not overwriting it back; find the other writer",
                        t.public_ip,
                        own.lease.subnet
                    );
                }
            }
            _ => {
                self.said.cleared();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_drift_is_named() {
        let c = NetworkConfig::parse_and_check(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let d = ConfigDrift::new(c);
        let p = |t: &str| d.problem(NetworkConfig::parse_and_check(t));
        assert_eq!(
            p(r#"{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}"#),
            None,
            "same config, other spelling"
        );
        assert!(
            p(r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap()
                .contains("differs")
        );
        assert!(p("{oops").unwrap().contains("invalid"));
    }
}

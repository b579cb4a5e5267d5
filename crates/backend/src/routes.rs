//! Routes with a gateway on one link, made to match the desired set without ever replacing or
//! removing a route flannel does not own.
//!
//! `ours` are the routes flannel owns on the link (removed when no longer desired, replaced
//! when different); `adopt` are foreign routes with a desired destination, which the lease
//! guard let through (upstream flannel's identical leftovers, or a route changed by hand on a
//! destination we had routed): they are rewritten in place as ours, so they go with their lease. Every other desired route is created exclusively:
//! if someone else's route for that destination appeared meanwhile, the kernel says EEXIST and
//! the next pass's guard skips the lease.

use crate::ReconcileReport;
use flannel_net::{NetOps, RouteWrite};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use tracing::{debug, warn};

pub struct RoutePlan {
    idx: u32,
    onlink: bool,
    remove: Vec<(IpNet, IpAddr)>,
    upsert: Vec<(IpNet, IpAddr, RouteWrite)>,
}

impl RoutePlan {
    pub fn new(
        idx: u32,
        onlink: bool,
        desired: &BTreeMap<IpNet, IpAddr>,
        ours: &BTreeMap<IpNet, IpAddr>,
        adopt: &BTreeSet<IpNet>,
    ) -> Self {
        let remove = ours
            .iter()
            .filter(|(d, _)| !desired.contains_key(*d))
            .map(|(d, g)| (*d, *g))
            .collect();
        let upsert = desired
            .iter()
            .filter(|(d, g)| ours.get(*d) != Some(*g) || adopt.contains(*d))
            .map(|(d, g)| {
                let how = if ours.contains_key(d) || adopt.contains(d) {
                    RouteWrite::Replace
                } else {
                    RouteWrite::Create
                };
                (*d, *g, how)
            })
            .collect();
        Self {
            idx,
            onlink,
            remove,
            upsert,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.upsert.is_empty()
    }

    /// The destinations [`RoutePlan::remove`] deletes.
    pub fn removals(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.remove.iter().map(|(d, _)| *d)
    }

    /// How many of the writes put back a route to a destination the previous pass had routed
    /// (`claimed`), leaving out those whose write `failed`: drift healed, not a new peer.
    pub fn repairs(&self, claimed: &BTreeSet<IpNet>, failed: &BTreeSet<IpNet>) -> usize {
        self.upsert
            .iter()
            .filter(|(d, _, _)| claimed.contains(d) && !failed.contains(d))
            .count()
    }

    /// Deletes our routes that are no longer desired, as one pipelined batch.
    pub async fn remove(&self, nl: &impl NetOps) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let dels = self
            .remove
            .iter()
            .copied()
            .map(|(d, g)| nl.del_route(d, g, self.idx));
        crate::batch::pipelined_each(dels, |i, r| {
            let (d, g) = self.remove[i];
            match r {
                Ok(()) => {
                    debug!(subnet = %d, via = %g, "removed route to a peer that has no lease any more");
                    report.removed += 1;
                }
                Err(e) => {
                    warn!(error = %e, "removing a route failed; retrying on the next pass");
                    report.failed += 1;
                }
            }
        })
        .await;
        report
    }

    /// Writes the missing and different routes, as one pipelined batch. Also returns the
    /// destinations whose write failed.
    pub async fn upsert(&self, nl: &impl NetOps) -> (ReconcileReport, BTreeSet<IpNet>) {
        let mut report = ReconcileReport::default();
        let mut failed = BTreeSet::new();
        let writes = self
            .upsert
            .iter()
            .copied()
            .map(|(d, g, how)| nl.write_route(d, g, self.idx, self.onlink, how));
        crate::batch::pipelined_each(writes, |i, r| {
            let (d, g, _) = self.upsert[i];
            match r {
                Ok(()) => {
                    debug!(subnet = %d, via = %g, "programmed route to peer");
                    report.added += 1;
                }
                Err(e) => {
                    warn!(error = %e, "writing a route failed; retrying on the next pass");
                    report.failed += 1;
                    failed.insert(d);
                }
            }
        })
        .await;
        (report, failed)
    }
}

/// The peer subnets of `family` a lease burst touches (our own excluded: a change to it takes
/// a full pass), sorted.
pub fn touched_subnets(
    family: flannel_core::Family,
    own: IpNet,
    changed: &[flannel_core::Lease],
    removed: &[flannel_core::Lease],
) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = changed
        .iter()
        .chain(removed)
        .filter_map(|l| l.subnet_of(family))
        .filter(|s| *s != own)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<IpNet, IpAddr> {
        pairs
            .iter()
            .map(|(d, g)| (d.parse().unwrap(), g.parse().unwrap()))
            .collect()
    }

    #[test]
    fn only_our_routes_are_replaced_or_removed() {
        let desired = m(&[
            ("10.244.1.0/24", "10.0.0.51"),
            ("10.244.2.0/24", "10.0.0.52"),
            ("10.244.3.0/24", "10.0.0.53"),
        ]);
        let ours = m(&[
            ("10.244.2.0/24", "10.0.0.99"),
            ("10.244.9.0/24", "10.0.0.59"),
        ]);
        let adopt: BTreeSet<IpNet> = ["10.244.3.0/24".parse().unwrap()].into();
        let p = RoutePlan::new(2, false, &desired, &ours, &adopt);
        assert_eq!(
            p.remove,
            vec![(
                "10.244.9.0/24".parse().unwrap(),
                "10.0.0.59".parse().unwrap()
            )]
        );
        let hows: Vec<(String, RouteWrite)> = p
            .upsert
            .iter()
            .map(|(d, _, h)| (d.to_string(), *h))
            .collect();
        assert_eq!(
            hows,
            vec![
                ("10.244.1.0/24".into(), RouteWrite::Create),
                ("10.244.2.0/24".into(), RouteWrite::Replace),
                ("10.244.3.0/24".into(), RouteWrite::Replace),
            ]
        );
        // Nothing to do when the kernel matches.
        assert!(RoutePlan::new(2, false, &desired, &desired, &BTreeSet::new()).is_empty());
    }
}

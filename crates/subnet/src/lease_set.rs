//! Every known lease, by who holds it, and the ones backends program.
//!
//! Leases are data anyone with write access can put in the datastore: a Node created with
//! another node's podCIDR, a key written by hand. Each holder's claim is kept under its own
//! name, so one claim never replaces or removes another's. Claims whose subnets overlap (the
//! same subnet, or one inside the other) are settled here, before any backend sees them: the
//! claim that was there first is accepted, a newcomer waits (reported as a conflict) until
//! the claim it overlaps goes away, and this node's own subnet is never given to anyone
//! else. The accepted leases have unique, non-overlapping subnets: backends key their kernel
//! entries by subnet and need no further checks.
//!
//! Events are applied level-style: a snapshot replaces everything (holders it no longer
//! names are gone), keeping the seniority of the holders it still names.

use crate::cidr_index::CidrIndex;
use crate::events::{Claim, LeaseEvent, Owner};
use flannel_core::subnet_key::SubnetKey;
use flannel_core::{Family, Lease};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One holder's claim.
#[derive(Debug, Clone)]
struct Held {
    key: SubnetKey,
    /// The order claims were first seen in (a listing orders its new ones by `since`).
    seq: u64,
    /// `None`: accepted (the lease is in `leases`). `Some`: waiting behind an overlapping
    /// claim that was there first.
    waiting: Option<Box<Waiting>>,
}

#[derive(Debug, Clone)]
struct Waiting {
    lease: Lease,
    /// The newcomer's subnet that overlaps, and who holds the block it overlaps.
    subnet: IpNet,
    holder: Owner,
    holder_subnet: IpNet,
}

/// A claim left out because it overlaps one that was there first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The newcomer, left out.
    pub owner: Owner,
    pub subnet: IpNet,
    /// Who holds the overlapping subnet, and that subnet.
    pub holder: Owner,
    pub holder_subnet: IpNet,
}

#[derive(Debug, Clone, Default)]
pub struct LeaseSet {
    claims: HashMap<Owner, Held>,
    next_seq: u64,
    /// The accepted leases (in no particular order), their holders, and an index by key: a
    /// full pass borrows every lease instead of copying thousands of them.
    leases: Vec<Lease>,
    owners: Vec<Owner>,
    index: HashMap<SubnetKey, usize>,
    /// The accepted subnets of both families, and this node's own.
    cidrs: CidrIndex<Owner>,
    /// This node: its claim always wins, and its subnets are kept from others even while
    /// the datastore shows no claim of ours.
    own: Option<(Owner, SubnetKey)>,
    /// The cluster networks. Only a claim inside them holds its subnets against others: a
    /// lease no node would route (`0.0.0.0/1`, another network) must not push real ones
    /// out; it goes on to the backend, which reports it. Empty: every claim holds.
    networks: Vec<IpNet>,
    /// Accepted leases touched since [`LeaseSet::take_touched`], as they were before.
    touched: BTreeMap<SubnetKey, Option<Lease>>,
    /// The holders whose claim waits (few: looked at on every change).
    waiting: BTreeSet<Owner>,
    /// While a listing is taken in: nothing is recorded in `touched` (a full pass follows).
    listing: bool,
}

impl PartialEq for LeaseSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.leases.iter().all(|l| other.get(&l.key()) == Some(l))
    }
}

/// A lease's subnets, the degenerate IPv4 `0.0.0.0/0` of an IPv6-only lease left out.
fn subnets(l: &Lease) -> impl Iterator<Item = IpNet> + '_ {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| l.subnet_of(f))
}

fn key_subnets(k: &SubnetKey) -> impl Iterator<Item = IpNet> {
    let v4 = (k.v4.prefix_len() > 0).then_some(IpNet::V4(k.v4));
    v4.into_iter().chain(k.v6.map(IpNet::V6))
}

impl LeaseSet {
    /// A set that keeps `key` for this node, held as `owner`, in the cluster `networks`.
    pub fn with_own(owner: Owner, key: SubnetKey, networks: Vec<IpNet>) -> Self {
        let mut s = Self {
            own: Some((owner, key)),
            networks,
            ..Self::default()
        };
        s.reserve_own();
        s
    }

    /// The subnets of `l` that lie in a cluster network: those it holds against others
    /// (one outside is skipped by the backend, and must not push a real lease out).
    fn held_subnets<'a>(&'a self, l: &'a Lease) -> impl Iterator<Item = IpNet> + 'a {
        subnets(l)
            .filter(|n| self.networks.is_empty() || self.networks.iter().any(|net| net.contains(n)))
    }

    fn reserve_own(&mut self) {
        if let Some((o, k)) = &self.own {
            for n in key_subnets(k) {
                self.cidrs.insert(&n, o.clone());
            }
        }
    }

    fn is_own(&self, o: &Owner) -> bool {
        self.own.as_ref().is_some_and(|(own, _)| own == o)
    }

    pub fn apply(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Snapshot(all) => self.replace_all(all),
            LeaseEvent::Added(c) => {
                let key = c.lease.key();
                match self.claims.get_mut(&c.owner) {
                    // Changed in place: same subnets, same seniority.
                    Some(h) if h.key == key => match &mut h.waiting {
                        Some(w) => w.lease = c.lease,
                        None => {
                            let seq = h.seq;
                            self.accept(c.owner, c.lease, key, seq);
                        }
                    },
                    // New, or other subnets: a new claim, behind every claim already there.
                    _ => {
                        self.withdraw(&c.owner);
                        self.admit(c.owner, c.lease, None);
                        self.promote_waiting();
                    }
                }
            }
            LeaseEvent::Removed(o) => {
                if self.withdraw(&o) {
                    self.promote_waiting();
                }
            }
        }
    }

    /// Replaces everything with a listing. Holders already known keep their place; new ones
    /// are placed in the datastore's order of creation.
    fn replace_all(&mut self, all: Vec<Claim>) {
        // Each claim with the place its holder had (the same key), read before the old
        // claims go: the map is cleared in place, never held twice (20000 claims).
        let mut all: Vec<(Option<u64>, Claim)> = all
            .into_iter()
            .map(|c| {
                let seq = self
                    .claims
                    .get(&c.owner)
                    .filter(|h| h.key == c.lease.key())
                    .map(|h| h.seq);
                (seq, c)
            })
            .collect();
        self.claims.clear();
        all.sort_by(|(sa, a), (sb, b)| {
            // Our own claim first (it wins over anything overlapping it); then the known
            // ones, in their order; then the new ones by creation.
            let own = |c: &Claim| !self.is_own(&c.owner);
            (own(a), sa.is_none(), sa, a.since, &a.owner).cmp(&(
                own(b),
                sb.is_none(),
                sb,
                b.since,
                &b.owner,
            ))
        });
        self.waiting.clear();
        self.touched.clear();
        self.listing = true;
        self.leases.clear();
        self.owners.clear();
        self.index.clear();
        self.cidrs.clear();
        self.reserve_own();
        for (seq, c) in all {
            self.admit(c.owner, c.lease, seq);
        }
        self.listing = false;
        self.leases.shrink_to_fit();
        self.owners.shrink_to_fit();
    }

    /// Takes `o`'s claim out; true when it was accepted (its subnets are free now).
    fn withdraw(&mut self, o: &Owner) -> bool {
        self.waiting.remove(o);
        match self.claims.remove(o) {
            Some(h) if h.waiting.is_none() => {
                self.unaccept(&h.key);
                true
            }
            _ => false,
        }
    }

    /// Removes an accepted lease from the programmed set.
    fn unaccept(&mut self, key: &SubnetKey) -> Option<Lease> {
        let i = self.index.remove(key)?;
        let was = self.leases.swap_remove(i);
        let owner = self.owners.swap_remove(i);
        if let Some(moved) = self.leases.get(i) {
            self.index.insert(moved.key(), i);
        }
        for n in subnets(&was) {
            self.cidrs.remove_held_by(&n, &owner);
        }
        // Our subnets stay kept from others.
        self.reserve_own();
        if !self.listing {
            self.touched.entry(*key).or_insert(Some(was.clone()));
        }
        Some(was)
    }

    /// The first accepted block (or our own) that one of `lease`'s subnets overlaps, held by
    /// someone other than `o`: (our subnet, their block, its holder).
    fn blocker(&self, o: &Owner, lease: &Lease) -> Option<(IpNet, IpNet, Owner)> {
        if self.held_subnets(lease).next().is_none() {
            // Nothing inside the networks (or no subnet at all): only the very same key is in
            // the way (two claims are never one programmed lease).
            let n = subnets(lease).next().unwrap_or(IpNet::V4(lease.subnet));
            return self
                .owner_of(&lease.key())
                .filter(|h| *h != o)
                .map(|h| (n, n, h.clone()));
        }
        self.held_subnets(lease).find_map(|n| {
            self.cidrs
                .overlapping(&n)
                .filter(|(_, holder)| *holder != o)
                .map(|(hn, h)| (n, hn, h.clone()))
        })
    }

    /// Admits `o`'s claim: accepted unless it overlaps an accepted one (then waiting). `seq`
    /// is its place when known (a holder re-listed).
    fn admit(&mut self, o: Owner, lease: Lease, seq: Option<u64>) {
        let key = lease.key();
        let seq = seq.unwrap_or_else(|| {
            self.next_seq += 1;
            self.next_seq
        });
        if self.is_own(&o) {
            // Whoever took our subnet waits behind us (bounded: each round frees a block).
            for _ in 0..=self.leases.len() {
                let Some((n, hn, b)) = self.blocker(&o, &lease) else {
                    break;
                };
                if !self.demote(&b, &o, n, hn) {
                    self.cidrs.remove(&hn);
                }
            }
            self.accept(o, lease, key, seq);
            return;
        }
        match self.blocker(&o, &lease) {
            Some((subnet, holder_subnet, holder)) => {
                let waiting = Waiting {
                    lease,
                    subnet,
                    holder,
                    holder_subnet,
                };
                self.waiting.insert(o.clone());
                self.claims.insert(
                    o,
                    Held {
                        key,
                        seq,
                        waiting: Some(Box::new(waiting)),
                    },
                );
            }
            None => self.accept(o, lease, key, seq),
        }
    }

    fn accept(&mut self, o: Owner, lease: Lease, key: SubnetKey, seq: u64) {
        let held: Vec<IpNet> = self.held_subnets(&lease).collect();
        for n in held {
            self.cidrs.insert(&n, o.clone());
        }
        let before = match self.index.get(&key) {
            Some(&i) => {
                self.owners[i] = o.clone();
                Some(std::mem::replace(&mut self.leases[i], lease))
            }
            None => {
                self.index.insert(key, self.leases.len());
                self.leases.push(lease);
                self.owners.push(o.clone());
                None
            }
        };
        if !self.listing {
            self.touched.entry(key).or_insert(before);
        }
        self.waiting.remove(&o);
        self.claims.insert(
            o,
            Held {
                key,
                seq,
                waiting: None,
            },
        );
    }

    /// Moves `o`'s accepted claim to waiting behind `holder`, whose `holder_subnet` overlaps
    /// `o`'s `block`; false when `o` holds nothing accepted.
    fn demote(&mut self, o: &Owner, holder: &Owner, holder_subnet: IpNet, block: IpNet) -> bool {
        let Some(h) = self.claims.get(o).cloned() else {
            return false;
        };
        if h.waiting.is_some() {
            return false;
        }
        let Some(lease) = self.unaccept(&h.key) else {
            return false;
        };
        self.waiting.insert(o.clone());
        self.claims.insert(
            o.clone(),
            Held {
                waiting: Some(Box::new(Waiting {
                    lease,
                    subnet: block,
                    holder: holder.clone(),
                    holder_subnet,
                })),
                ..h
            },
        );
        true
    }

    /// Accepts the waiting claims that overlap nothing any more, oldest first; the others
    /// learn who they wait behind now.
    fn promote_waiting(&mut self) {
        let mut waiting: Vec<(u64, Owner)> = self
            .waiting
            .iter()
            .filter_map(|o| Some((self.claims.get(o)?.seq, o.clone())))
            .collect();
        waiting.sort();
        for (seq, o) in waiting {
            self.waiting.remove(&o);
            let Some(Held {
                waiting: Some(w), ..
            }) = self.claims.remove(&o)
            else {
                continue;
            };
            self.admit(o, w.lease, Some(seq));
        }
    }

    /// Every accepted lease, borrowed (this node's own included when the datastore shows it).
    pub fn as_slice(&self) -> &[Lease] {
        &self.leases
    }

    /// Every accepted lease with its holder.
    pub fn accepted(&self) -> impl Iterator<Item = (&Owner, &Lease)> {
        self.owners.iter().zip(&self.leases)
    }

    /// Every claim, accepted or waiting, with its holder, in holder order.
    pub fn claims(&self) -> Vec<(&Owner, &Lease)> {
        let mut v: Vec<(&Owner, &Lease)> = self
            .claims
            .iter()
            .filter_map(|(o, h)| Some((o, self.claim_of(h)?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    fn claim_of<'a>(&'a self, h: &'a Held) -> Option<&'a Lease> {
        match &h.waiting {
            Some(w) => Some(&w.lease),
            None => self.index.get(&h.key).map(|&i| &self.leases[i]),
        }
    }

    /// Every accepted lease, copied, in key order.
    pub fn leases(&self) -> Vec<Lease> {
        let mut v = self.leases.clone();
        v.sort_by_key(|l| l.key());
        v
    }

    /// The accepted lease under `key`, if any.
    pub fn get(&self, key: &SubnetKey) -> Option<&Lease> {
        self.index.get(key).map(|&i| &self.leases[i])
    }

    /// Who holds the accepted lease under `key`.
    pub fn owner_of(&self, key: &SubnetKey) -> Option<&Owner> {
        self.index.get(key).map(|&i| &self.owners[i])
    }

    /// `o`'s claim, accepted or waiting.
    pub fn claim(&self, o: &Owner) -> Option<&Lease> {
        self.claims.get(o).and_then(|h| self.claim_of(h))
    }

    /// The claims left out, each with the one it overlaps, by newcomer.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut v: Vec<Conflict> = self
            .waiting
            .iter()
            .filter_map(|o| {
                let w = self.claims.get(o)?.waiting.as_ref()?;
                Some(Conflict {
                    owner: o.clone(),
                    subnet: w.subnet,
                    holder: w.holder.clone(),
                    holder_subnet: w.holder_subnet,
                })
            })
            .collect();
        v.sort();
        v
    }

    /// The accepted leases changed since the last call, each as it was before.
    pub fn take_touched(&mut self) -> BTreeMap<SubnetKey, Option<Lease>> {
        std::mem::take(&mut self.touched)
    }

    /// Accepted leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether any holder claims anything.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(s: &str, ip: &str) -> Lease {
        flannel_testkit::parse::lease(s, ip, "vxlan")
    }

    fn claim(owner: &str, s: &str, ip: &str) -> Claim {
        Claim::new(Owner::new(owner), lease(s, ip), 0)
    }

    fn added(owner: &str, s: &str, ip: &str) -> LeaseEvent {
        LeaseEvent::Added(claim(owner, s, ip))
    }

    fn removed(owner: &str) -> LeaseEvent {
        LeaseEvent::Removed(Owner::new(owner))
    }

    /// (holder, subnet, public IP) of every accepted lease, sorted.
    fn accepted(s: &LeaseSet) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = s
            .accepted()
            .map(|(o, l)| {
                (
                    o.to_string(),
                    l.subnet.to_string(),
                    l.attrs.public_ip.to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn row(o: &str, s: &str, ip: &str) -> (String, String, String) {
        (o.into(), s.into(), ip.into())
    }

    #[test]
    fn snapshot_replaces_and_events_update() {
        let mut s = LeaseSet::default();
        s.apply(added("a", "10.1.1.0/24", "10.0.0.1"));
        s.apply(added("b", "10.1.2.0/24", "10.0.0.2"));
        s.apply(removed("a"));
        assert_eq!(accepted(&s), vec![row("b", "10.1.2.0/24", "10.0.0.2")]);
        s.apply(LeaseEvent::Snapshot(vec![claim(
            "c",
            "10.1.3.0/24",
            "10.0.0.3",
        )]));
        assert_eq!(accepted(&s), vec![row("c", "10.1.3.0/24", "10.0.0.3")]);
        assert!(s.claim(&Owner::new("b")).is_none());
    }

    /// The short-lived Node of the issue: a Node `dup` claiming node1's podCIDR neither
    /// replaces node1's lease while it exists nor takes it away when it is deleted.
    #[test]
    fn a_second_claim_on_a_subnet_waits_and_never_removes_the_first() {
        let mut s = LeaseSet::default();
        s.apply(added("node1", "10.244.1.0/24", "10.0.0.51"));
        s.take_touched();
        s.apply(added("dup", "10.244.1.0/24", "10.0.0.99"));
        assert_eq!(
            accepted(&s),
            vec![row("node1", "10.244.1.0/24", "10.0.0.51")]
        );
        assert!(s.take_touched().is_empty(), "nothing programmed changed");
        let c = s.conflicts();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].owner.as_str(), c[0].holder.as_str()),
            ("dup", "node1")
        );
        s.apply(removed("dup"));
        assert_eq!(
            accepted(&s),
            vec![row("node1", "10.244.1.0/24", "10.0.0.51")]
        );
        assert!(s.conflicts().is_empty());
        assert!(s.take_touched().is_empty());
    }

    /// When the first holder goes, the one waiting behind it is programmed at once; a
    /// `/25` inside another's `/24` is a conflict too.
    #[test]
    fn the_survivor_takes_over_when_the_first_holder_goes() {
        let mut s = LeaseSet::default();
        s.apply(added("node1", "10.244.1.0/24", "10.0.0.51"));
        s.apply(added("half", "10.244.1.128/25", "10.0.0.98"));
        s.apply(added("dup", "10.244.1.0/24", "10.0.0.99"));
        assert_eq!(s.conflicts().len(), 2);
        s.take_touched();
        s.apply(removed("node1"));
        // The older of the two waiting claims wins.
        assert_eq!(
            accepted(&s),
            vec![row("half", "10.244.1.128/25", "10.0.0.98")]
        );
        let t = s.take_touched();
        assert_eq!(t.len(), 2, "{t:?}");
        let c = s.conflicts();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].owner.as_str(), c[0].holder.as_str()), ("dup", "half"));
        assert_eq!(c[0].holder_subnet.to_string(), "10.244.1.128/25");
        s.apply(removed("half"));
        assert_eq!(accepted(&s), vec![row("dup", "10.244.1.0/24", "10.0.0.99")]);
    }

    /// Our own subnet is never given to another holder, whether or not the datastore shows
    /// our own claim, and whoever holds it before our claim arrives is pushed out.
    #[test]
    fn our_own_subnet_is_never_given_to_another() {
        let own = lease("10.244.0.0/24", "10.0.0.50").key();
        let mut s = LeaseSet::with_own(Owner::new("master1"), own, vec![]);
        s.apply(added("dup", "10.244.0.0/24", "10.0.0.99"));
        assert!(accepted(&s).is_empty());
        assert_eq!(s.conflicts()[0].holder.as_str(), "master1");
        s.apply(added("master1", "10.244.0.0/24", "10.0.0.50"));
        assert_eq!(
            accepted(&s),
            vec![row("master1", "10.244.0.0/24", "10.0.0.50")]
        );
        // A listing where the intruder comes first changes nothing.
        let mut early = claim("inside", "10.244.0.0/25", "10.0.0.97");
        early.since = -5;
        s.apply(LeaseEvent::Snapshot(vec![
            early,
            claim("dup", "10.244.0.0/24", "10.0.0.99"),
            claim("master1", "10.244.0.0/24", "10.0.0.50"),
        ]));
        assert_eq!(
            accepted(&s),
            vec![row("master1", "10.244.0.0/24", "10.0.0.50")]
        );
        assert_eq!(s.conflicts().len(), 2);
        // Our claim gone from the datastore: the subnet stays ours.
        s.apply(removed("master1"));
        assert!(accepted(&s).is_empty());
        assert_eq!(
            s.claim(&Owner::new("dup"))
                .unwrap()
                .attrs
                .public_ip
                .to_string(),
            "10.0.0.99"
        );
    }

    /// A listing keeps the seniority of holders it still names; new ones are placed by the
    /// datastore's creation order.
    #[test]
    fn a_listing_keeps_seniority_and_orders_newcomers_by_creation() {
        let mut s = LeaseSet::default();
        s.apply(added("late", "10.244.5.0/24", "10.0.0.5"));
        let mut older = claim("older", "10.244.5.0/24", "10.0.0.6");
        older.since = 1;
        s.apply(LeaseEvent::Snapshot(vec![
            older,
            claim("late", "10.244.5.0/24", "10.0.0.5"),
        ]));
        assert_eq!(accepted(&s), vec![row("late", "10.244.5.0/24", "10.0.0.5")]);

        let mut fresh = LeaseSet::default();
        let (mut a, mut b) = (
            claim("b-first", "10.244.6.0/24", "10.0.0.7"),
            claim("a-second", "10.244.6.0/24", "10.0.0.8"),
        );
        a.since = 10;
        b.since = 20;
        fresh.apply(LeaseEvent::Snapshot(vec![b, a]));
        assert_eq!(
            accepted(&fresh),
            vec![row("b-first", "10.244.6.0/24", "10.0.0.7")]
        );
    }

    /// A holder's lease changed in place keeps its place; moved to another subnet it is a
    /// new claim, and what it left is free for the one waiting.
    #[test]
    fn changes_in_place_keep_the_place_and_moves_free_the_old_subnet() {
        let mut s = LeaseSet::default();
        s.apply(added("a", "10.1.1.0/24", "10.0.0.1"));
        s.apply(added("b", "10.1.1.0/24", "10.0.0.2"));
        s.take_touched();
        s.apply(added("a", "10.1.1.0/24", "10.0.0.11"));
        assert_eq!(accepted(&s), vec![row("a", "10.1.1.0/24", "10.0.0.11")]);
        let t = s.take_touched();
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.values()
                .next()
                .unwrap()
                .as_ref()
                .unwrap()
                .attrs
                .public_ip
                .to_string(),
            "10.0.0.1"
        );
        s.apply(added("b", "10.1.1.0/24", "10.0.0.22"));
        assert_eq!(
            s.claim(&Owner::new("b"))
                .unwrap()
                .attrs
                .public_ip
                .to_string(),
            "10.0.0.22"
        );
        s.apply(added("a", "10.1.2.0/24", "10.0.0.11"));
        assert_eq!(
            accepted(&s),
            vec![
                row("a", "10.1.2.0/24", "10.0.0.11"),
                row("b", "10.1.1.0/24", "10.0.0.22")
            ]
        );
        assert!(s.conflicts().is_empty());
    }

    /// A claim outside the cluster networks holds nothing against others (the backend
    /// reports it): a huge planted lease cannot push real ones out. A dual-stack claim half
    /// outside still holds its inside half (found by the fuzz target).
    #[test]
    fn a_claim_outside_the_networks_blocks_nobody() {
        let own = lease("10.244.0.0/24", "10.0.0.50").key();
        let nets = vec!["10.244.0.0/16".parse().unwrap()];
        let mut s = LeaseSet::with_own(Owner::new("own"), own, nets);
        s.apply(added("huge", "0.0.0.0/1", "10.0.0.99"));
        s.apply(added("outside", "192.168.50.0/24", "10.0.0.98"));
        s.apply(added("node1", "10.244.1.0/24", "10.0.0.51"));
        s.apply(added("also-outside", "192.168.50.0/24", "10.0.0.97"));
        assert_eq!(
            accepted(&s),
            vec![
                row("huge", "0.0.0.0/1", "10.0.0.99"),
                row("node1", "10.244.1.0/24", "10.0.0.51"),
                row("outside", "192.168.50.0/24", "10.0.0.98"),
            ]
        );
        // The same key twice is still one lease.
        assert_eq!(s.conflicts().len(), 1);
        s.apply(removed("outside"));
        assert!(s.conflicts().is_empty());
        assert_eq!(s.len(), 3);

        let own = lease("10.244.0.0/24", "10.0.0.50").key();
        let nets = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ];
        let mut s = LeaseSet::with_own(Owner::new("own"), own, nets);
        let mut half = lease("192.168.0.0/24", "10.0.0.60");
        half.ipv6_subnet = Some("fd00:10:244:1::/64".parse().unwrap());
        s.apply(LeaseEvent::Added(Claim::new(Owner::new("half"), half, 0)));
        let mut v6 = lease("10.244.2.0/24", "10.0.0.61");
        v6.ipv6_subnet = Some("fd00:10:244::/56".parse().unwrap());
        s.apply(LeaseEvent::Added(Claim::new(Owner::new("v6"), v6, 0)));
        assert_eq!(s.conflicts().len(), 1, "{:?}", s.conflicts());
        assert_eq!(s.conflicts()[0].holder.as_str(), "half");
    }

    /// Leases with no subnet at all (an IPv4 part of 0.0.0.0/0 and no IPv6 one): two of
    /// them are still one programmed lease and one left out (found by the fuzz target).
    #[test]
    fn claims_without_any_subnet_share_nothing() {
        let mut s = LeaseSet::default();
        s.apply(added("a", "0.0.0.0/0", "10.0.0.1"));
        s.apply(added("b", "0.0.0.0/0", "10.0.0.2"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.conflicts().len(), 1);
        assert_eq!(s.claims().len(), 2);
    }

    #[test]
    fn removals_keep_the_index_right() {
        let mut s = LeaseSet::default();
        for i in 0..50 {
            s.apply(added(
                &format!("n{i}"),
                &format!("10.1.{i}.0/24"),
                "10.0.0.1",
            ));
        }
        for i in (0..50).step_by(3) {
            s.apply(removed(&format!("n{i}")));
        }
        s.apply(added("n1", "10.1.1.0/24", "10.0.0.2"));
        for i in 0..50 {
            let k = lease(&format!("10.1.{i}.0/24"), "10.0.0.1").key();
            assert_eq!(s.get(&k).is_some(), i % 3 != 0, "{i}");
            if let Some(l) = s.get(&k) {
                assert_eq!(l.key(), k);
                assert_eq!(s.owner_of(&k).unwrap().as_str(), format!("n{i}"));
            }
        }
        assert_eq!(s.len(), 33);
        assert_eq!(s.as_slice().len(), 33);
    }

    /// Random bursts of claims, moves and removals: the accepted set never overlaps, every
    /// waiting claim overlaps an accepted one (or our own subnet), and each holder is
    /// either accepted or waiting.
    #[test]
    fn random_churn_keeps_the_accepted_set_disjoint_and_waiting_justified() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let own = lease("10.9.0.0/24", "10.0.0.1").key();
        let mut s =
            LeaseSet::with_own(Owner::new("own"), own, vec!["10.9.0.0/16".parse().unwrap()]);
        for step in 0..3000 {
            let who = format!("h{}", rnd() % 30);
            match rnd() % 10 {
                0..=5 => {
                    let len = 23 + (rnd() % 3) as u8;
                    let third = rnd() % 12;
                    let net: ipnet::Ipv4Net = format!("10.9.{third}.0/{len}")
                        .parse::<ipnet::Ipv4Net>()
                        .unwrap()
                        .trunc();
                    s.apply(added(&who, &net.to_string(), "10.0.0.2"));
                }
                6..=8 => s.apply(removed(&who)),
                _ => {
                    let all: Vec<Claim> = s
                        .claims()
                        .into_iter()
                        .map(|(o, l)| Claim::new(o.clone(), l.clone(), 0))
                        .collect();
                    s.apply(LeaseEvent::Snapshot(all));
                }
            }
            let acc: Vec<IpNet> = s.as_slice().iter().map(|l| IpNet::V4(l.subnet)).collect();
            for (i, a) in acc.iter().enumerate() {
                for b in &acc[i + 1..] {
                    assert!(
                        !(a.contains(b) || b.contains(a)),
                        "step {step}: {a} and {b}"
                    );
                }
                assert!(!a.contains(&IpNet::V4(own.v4)) && !IpNet::V4(own.v4).contains(a));
            }
            for c in s.conflicts() {
                let blocked = acc
                    .iter()
                    .chain([IpNet::V4(own.v4)].iter())
                    .any(|a| a.contains(&c.subnet) || c.subnet.contains(a));
                assert!(blocked, "step {step}: {c:?} waits for nothing");
            }
            assert_eq!(s.claims().len(), s.len() + s.conflicts().len());
        }
    }
}

//! The userspace data path's counters, one type for both encapsulations (udp, wireguard):
//! shared by every worker of a backend, read by the control side (drop reports) and metrics.
//! Each encapsulation uses the fields that concern it; the others stay 0.

use std::sync::atomic::{AtomicU64, Ordering};
use tracing::warn;

#[derive(Debug, Default)]
pub struct Counters {
    /// Peers on all devices (set by the control side; wireguard).
    pub peers: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Inner (pod) bytes sent to and received from peers.
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Handshake initiations sent (wireguard).
    pub handshakes_sent: AtomicU64,
    /// Datagrams from no known peer: an unknown sender address (udp; upstream accepts them,
    /// we drop them), an unknown session index or public key (wireguard).
    pub rx_unknown_peer: AtomicU64,
    /// Datagrams the Noise core refused (bad MAC, replay, stale session, wrong key...).
    pub rx_invalid: AtomicU64,
    /// Inner packets from a peer for an address outside our subnet (not relayed; udp).
    pub rx_not_for_us: AtomicU64,
    /// Inner packets whose source is outside what the sending peer may send (another node's
    /// subnet for udp, outside its allowed IPs for wireguard).
    pub rx_spoofed_source: AtomicU64,
    /// Handshake messages answered with a cookie reply (the device under load, no mac2).
    pub rx_under_load: AtomicU64,
    /// Handshake messages over their source address's rate.
    pub rx_rate_limited: AtomicU64,
    /// Handshake messages dropped because the handshake queue was full.
    pub rx_handshake_queue_full: AtomicU64,
    /// Packets from pods to an address no peer holds.
    pub no_route: AtomicU64,
    pub malformed: AtomicU64,
    pub ttl_expired: AtomicU64,
    pub errors: AtomicU64,
}

/// Adds `n` (relaxed: counters, not synchronization).
pub fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Says each drop reason whose count grew since it was last said (on every full pass and
/// every `--iptables-resync` tick), once, with the count.
#[derive(Debug, Default)]
pub struct DropReport {
    said: Vec<u64>,
}

impl DropReport {
    /// `reasons`: each counter with what its drops mean, always in the same order.
    pub fn report(&mut self, reasons: &[(&AtomicU64, &str)]) {
        self.said.resize(reasons.len(), 0);
        for ((counter, what), seen) in reasons.iter().zip(self.said.iter_mut()) {
            let now = counter.load(Ordering::Relaxed);
            if now > *seen {
                warn!(dropped = now - *seen, total = now, "{what}");
                *seen = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_growth_is_reported_and_remembered() {
        let c = Counters::default();
        let mut r = DropReport::default();
        inc(&c.malformed, 3);
        r.report(&[(&c.malformed, "m"), (&c.no_route, "n")]);
        assert_eq!(r.said, [3, 0]);
        r.report(&[(&c.malformed, "m"), (&c.no_route, "n")]);
        inc(&c.no_route, 1);
        r.report(&[(&c.malformed, "m"), (&c.no_route, "n")]);
        assert_eq!(r.said, [3, 1]);
    }
}

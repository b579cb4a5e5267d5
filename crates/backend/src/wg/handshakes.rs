//! Handshake messages, kept off the data path, as kernel WireGuard keeps them. A handshake
//! initiation costs two X25519 operations (tens of microseconds) and anyone who knows our
//! public key (it is in our lease) can send valid ones: answered inline, a flood of them
//! starved the pods' packets. So the workers only copy handshake messages (initiations,
//! responses, cookie replies) into a bounded queue and go on with data; one thread of lower
//! priority answers them, in order:
//! 1. mac1 must be right (a cheap keyed hash), else the message is dropped;
//! 2. past [`super::worker::HANDSHAKE_RATE_LIMIT`] handshakes a second the device is under
//!    load and a message without a valid mac2 gets a cookie reply instead of an answer (the
//!    sender must prove it receives at its address);
//! 3. no source address gets more than [`PER_SOURCE_RATE`] handshakes a second
//!    ([`PER_SOURCE_BURST`] at once) through to the expensive part;
//! 4. the peer's Noise session answers, and packets queued for the new session go.
//!
//! A full queue drops the newest message (counted): a real peer retries in 5 s.

use super::table::WgTable;
use super::worker::{open_datagram, Ctl, Identity, HANDSHAKE_MAX};
use crate::datapath::counters::Counters;
use crate::datapath::sock::Sock;
use boringtun::noise::TunnResult;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Handshake messages waiting at most (kernel WireGuard: 4096 per device; a real peer sends
/// one every few seconds at most).
pub const QUEUE: usize = 1024;
/// Handshakes a second one source address may have answered, and how many at once
/// (kernel WireGuard's figures).
pub const PER_SOURCE_RATE: f64 = 20.0;
pub const PER_SOURCE_BURST: f64 = 5.0;
/// Source addresses remembered at most; past that the oldest buckets are forgotten.
const SOURCES_MAX: usize = 4096;

/// One handshake message as it arrived: no allocation, it travels by value.
pub struct Queued {
    from: SocketAddr,
    len: u8,
    buf: [u8; HANDSHAKE_MAX],
}

/// The worker's end of the queue.
#[derive(Clone)]
pub struct HandshakeQueue(SyncSender<Queued>);

/// Whether a datagram is a handshake message (initiation, response or cookie reply) that
/// goes to the queue rather than to the data path.
pub fn is_handshake(d: &[u8]) -> bool {
    matches!(d.first(), Some(1..=3)) && d.len() <= HANDSHAKE_MAX
}

impl HandshakeQueue {
    /// Queues `d` from `from`; false (the message dropped) when the queue is full.
    pub fn push(&self, from: SocketAddr, d: &[u8]) -> bool {
        let mut q = Queued {
            from,
            len: d.len() as u8,
            buf: [0u8; HANDSHAKE_MAX],
        };
        q.buf[..d.len()].copy_from_slice(d);
        match self.0.try_send(q) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A token bucket per source address.
#[derive(Default)]
pub struct PerSource {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl PerSource {
    /// Whether `ip` may have one more handshake answered at `now`.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= SOURCES_MAX && !self.buckets.contains_key(&ip) {
            // Full buckets are as good as forgotten ones: drop those.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * PER_SOURCE_RATE < PER_SOURCE_BURST
            });
            if self.buckets.len() >= SOURCES_MAX {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((PER_SOURCE_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SOURCE_RATE)
            .min(PER_SOURCE_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The thread that answers a device's handshakes.
pub struct Handshaker {
    pub queue: Receiver<Queued>,
    pub ctl: Receiver<Ctl>,
    /// A copy of a worker's socket: answers leave from the device's port.
    pub sock: Sock,
    pub counters: Arc<Counters>,
    pub id: Arc<Identity>,
}

/// A queue of [`QUEUE`] messages: the workers' end and the handshaker's.
pub fn queue() -> (HandshakeQueue, Receiver<Queued>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    (HandshakeQueue(tx), rx)
}

impl Handshaker {
    pub fn run(self) {
        lower_priority();
        let mut table = Arc::new(WgTable::default());
        let mut sources = PerSource::default();
        let (mut slot, mut scratch) = (vec![0u8; 2048], vec![0u8; 65535]);
        let mut next_reset = Instant::now();
        loop {
            // The latest table first, also right before each answer: a handshake can arrive
            // with (or answer) a peer the control side has just handed over.
            while let Ok(m) = self.ctl.try_recv() {
                match m {
                    Ctl::Table(t) => table = t,
                    Ctl::Stop => return,
                }
            }
            // The limiter counts handshakes per second.
            if Instant::now() >= next_reset {
                self.id.limiter.reset_count();
                next_reset = Instant::now() + Duration::from_secs(1);
            }
            match self.queue.recv_timeout(Duration::from_millis(100)) {
                Ok(q) => {
                    while let Ok(m) = self.ctl.try_recv() {
                        match m {
                            Ctl::Table(t) => table = t,
                            Ctl::Stop => return,
                        }
                    }
                    let d = &q.buf[..usize::from(q.len)];
                    self.answer(d, q.from, &table, &mut sources, &mut slot, &mut scratch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn answer(
        &self,
        d: &[u8],
        from: SocketAddr,
        table: &WgTable,
        sources: &mut PerSource,
        slot: &mut [u8],
        scratch: &mut [u8],
    ) {
        let c = &self.counters;
        let send = &mut |to: SocketAddr, msg: &[u8]| {
            if self.sock.send_one(to, msg).is_err() {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        };
        if !admit(&self.id, sources, d, from, slot, c, send) {
            return;
        }
        let _ = open_datagram(&self.id, table, d, from, slot, scratch, c, send);
    }
}

/// Steps 1 to 3: mac1, cookies under load, the per-source rate. True when the message may go
/// on to its peer's session.
pub fn admit(
    id: &Identity,
    sources: &mut PerSource,
    d: &[u8],
    from: SocketAddr,
    buf: &mut [u8],
    c: &Counters,
    send: &mut impl FnMut(SocketAddr, &[u8]),
) -> bool {
    match id.limiter.verify_packet(Some(from.ip()), d, buf) {
        Ok(_) => {}
        Err(TunnResult::WriteToNetwork(cookie)) => {
            send(from, cookie);
            c.rx_under_load.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Err(_) => {
            c.rx_invalid.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    }
    // Cookie replies cost nothing to check: only initiations and responses are rate limited.
    if d.first() != Some(&3) && !sources.allow(from.ip(), Instant::now()) {
        c.rx_rate_limited.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// Handshakes yield to the data path when both want the CPU.
fn lower_priority() {
    // SAFETY: gettid(2) and setpriority(2) on this thread only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut s = PerSource::default();
        let ip: IpAddr = "10.0.0.99".parse().unwrap();
        let other: IpAddr = "10.0.0.98".parse().unwrap();
        let t0 = Instant::now();
        let first: usize = (0..100).filter(|_| s.allow(ip, t0)).count();
        assert_eq!(first, PER_SOURCE_BURST as usize);
        assert!(s.allow(other, t0), "another source has its own bucket");
        // One second later: the rate's worth more, never more than the burst at once.
        let later = t0 + Duration::from_secs(1);
        let next: usize = (0..100).filter(|_| s.allow(ip, later)).count();
        assert_eq!(next, PER_SOURCE_BURST as usize);
        let spread: usize = (0..100)
            .filter(|i| s.allow(ip, later + Duration::from_millis(10 * i)))
            .count();
        assert!((19..=22).contains(&spread), "{spread} in a second");
    }

    /// Valid initiations (mac1 from our public key, as anyone reading our lease can make):
    /// past the device's rate they get cookie replies instead of reaching the expensive part,
    /// and one source gets no more than its burst through.
    #[test]
    fn a_flood_of_valid_initiations_gets_cookies_and_per_source_limits() {
        use boringtun::noise::Tunn;
        use boringtun::x25519::{PublicKey, StaticSecret};
        let ours = StaticSecret::from([1u8; 32]);
        let id = Identity {
            limiter: Arc::new(boringtun::noise::rate_limiter::RateLimiter::new(
                &PublicKey::from(&ours),
                super::super::worker::HANDSHAKE_RATE_LIMIT,
            )),
            public: PublicKey::from(&ours),
            private: ours,
        };
        let mut attacker = Tunn::new(
            StaticSecret::from([9u8; 32]),
            id.public,
            None,
            None,
            1,
            None,
        );
        let c = Counters::default();
        let mut sources = PerSource::default();
        let mut buf = [0u8; 256];
        let mut init = [0u8; 256];
        let (mut admitted, mut cookies) = (0, 0);
        for i in 0..1000u32 {
            let TunnResult::WriteToNetwork(m) =
                attacker.format_handshake_initiation(&mut init, true)
            else {
                panic!("an initiation")
            };
            let m = m.to_vec();
            // Many sources: the device's rate decides.
            let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 51820));
            let mut sent = Vec::new();
            if admit(&id, &mut sources, &m, from, &mut buf, &c, &mut |_, r| {
                sent.push(r.to_vec())
            }) {
                admitted += 1;
            } else if sent.first().and_then(|r| r.first()) == Some(&3) {
                cookies += 1;
            }
        }
        let limit = super::super::worker::HANDSHAKE_RATE_LIMIT as usize;
        assert_eq!(admitted, limit, "the rest wait for cookies");
        assert_eq!(cookies, 1000 - limit);
        assert_eq!(
            c.rx_under_load.load(Ordering::Relaxed),
            (1000 - limit) as u64
        );
        // One source, the device not under load: its burst, then nothing this instant.
        id.limiter.reset_count();
        std::thread::sleep(Duration::from_millis(1100));
        id.limiter.reset_count();
        let from = SocketAddr::from(([10, 2, 0, 1], 51820));
        // Made first, then offered in a tight loop: making one costs a Diffie-Hellman, and at
        // 20 a second a slow (debug, busy) build would earn a token back meanwhile.
        let burst: Vec<Vec<u8>> = (0..50)
            .filter_map(
                |_| match attacker.format_handshake_initiation(&mut init, true) {
                    TunnResult::WriteToNetwork(m) => Some(m.to_vec()),
                    _ => None,
                },
            )
            .collect();
        assert_eq!(burst.len(), 50);
        let one = burst
            .iter()
            .filter(|m| admit(&id, &mut sources, m, from, &mut buf, &c, &mut |_, _| {}))
            .count();
        assert_eq!(one, PER_SOURCE_BURST as usize);
        // A message whose mac1 is wrong (random bytes) is dropped unanswered.
        let mut junk = [7u8; 148];
        junk[0] = 1;
        junk[1..4].fill(0);
        let mut sent = 0;
        assert!(!admit(
            &id,
            &mut sources,
            &junk,
            from,
            &mut buf,
            &c,
            &mut |_, _| sent += 1
        ));
        assert_eq!(sent, 0);
    }

    #[test]
    fn many_sources_keep_the_table_bounded() {
        let mut s = PerSource::default();
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            assert!(s.allow(IpAddr::from(i.to_be_bytes()), t0));
        }
        assert!(s.buckets.len() <= SOURCES_MAX);
    }

    #[test]
    fn only_handshake_messages_are_queued() {
        assert!(is_handshake(&[1u8; 148]));
        assert!(is_handshake(&[2u8; 92]));
        assert!(is_handshake(&[3u8; 64]));
        assert!(!is_handshake(&[4u8; 32]));
        assert!(!is_handshake(&[1u8; 149]));
        assert!(!is_handshake(&[]));
        let (q, rx) = queue();
        let from: SocketAddr = "10.0.0.99:51820".parse().unwrap();
        let sent = (0..QUEUE + 10)
            .filter(|_| q.push(from, &[1u8; 148]))
            .count();
        assert_eq!(sent, QUEUE, "a full queue drops");
        let got = rx.recv().unwrap();
        assert_eq!(usize::from(got.len), 148);
    }
}

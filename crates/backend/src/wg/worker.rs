//! A WireGuard data-path worker: one TUN queue and one UDP socket (`SO_REUSEPORT`, one per
//! worker on the device's port), polled together on a thread of its own, on the shared data
//! path (`crate::datapath`). Outbound, a TSO super-packet is cut into MTU-sized packets, each
//! sealed by the peer's Noise session, and the equal-sized datagrams leave in one UDP GSO send.
//! Inbound, GRO batches are opened datagram by datagram, every decrypted packet's source is
//! checked against the sending peer's allowed IPs (the Noise core does not), and TCP segments
//! are coalesced again for the TUN write. Worker 0 also runs the peers' timers (handshake
//! retries, rekeying, keepalives) and greets every new peer with a handshake.
//! Buffers are allocated once; no allocation per packet.

use super::handshakes::{is_handshake, HandshakeQueue};
use super::table::{PeerState, WgTable};
use crate::datapath::counters::{inc, Counters};
use crate::datapath::gro::Gro;
use crate::datapath::gso::{segment, SegError, Segments};
use crate::datapath::pump::{Encap, Io, Pump};
use crate::datapath::sock::{Received, RecvBatch};
use crate::datapath::vnet::{self, VnetHdr};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datapath::pump::RECV_BATCH;
/// Segments sealed and sent per UDP GSO send at most.
const MAX_SEGS: usize = 64;
/// A data message's header (16) and tag (16).
const DATA_OVERHEAD: usize = 32;
/// Handshake messages are at most this long (an initiation, 148 bytes).
pub const HANDSHAKE_MAX: usize = 148;
const TIMER_TICK: Duration = Duration::from_millis(100);

/// The control messages of a wireguard worker (and of the handshake thread).
pub type Ctl = crate::datapath::pump::Ctl<WgTable>;

/// What every worker of a device shares: our identity and the handshake rate limiter.
pub struct Identity {
    pub private: StaticSecret,
    pub public: PublicKey,
    pub limiter: Arc<RateLimiter>,
}

/// Handshake messages a second a device answers before it asks for cookies: 100 (boringtun's
/// device's figure), counted twice because each message is checked twice (by the handshake
/// thread before the expensive part, and again by its peer's Noise session).
pub const HANDSHAKE_RATE_LIMIT: u64 = 200;

impl Identity {
    pub fn new(private: crate::wg::config::Key) -> Self {
        let private = StaticSecret::from(private);
        let public = PublicKey::from(&private);
        Self {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private,
            public,
        }
    }
}

/// The wireguard encapsulation on the shared pump.
pub struct WgEncap {
    pub id: Arc<Identity>,
    /// Worker 0 runs the timers and greets new peers.
    pub timers: bool,
    /// Where handshake messages go (see `handshakes`).
    pub handshakes: HandshakeQueue,
    out: SealBufs,
    /// Decrypted packets, at the offsets of their datagrams in the receive buffers.
    opened: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    next_tick: Instant,
    next_reset: Instant,
}

// SAFETY: the iovecs in `out` are scratch space, rebuilt before every send; no pointer in
// them outlives the call that filled it.
unsafe impl Send for WgEncap {}

/// A wireguard worker: the shared pump with the wireguard encapsulation.
pub type Worker = Pump<WgEncap>;

/// The outbound side's buffers: segment headers, one plaintext, the sealed datagrams.
struct SealBufs {
    hdrs: Vec<u8>,
    plain: Vec<u8>,
    /// Sealed datagrams, `MAX_SEGS` slots of `stride` bytes.
    sealed: Vec<u8>,
    stride: usize,
    lens: Vec<usize>,
    iov: Vec<libc::iovec>,
}

/// The destination of an IPv4 or IPv6 packet.
fn dst_of(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(
            pkt[16], pkt[17], pkt[18], pkt[19],
        ))),
        6 if pkt.len() >= 40 => {
            let b: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

impl WgEncap {
    /// `mtu`: the device MTU, the largest inner packet sealed.
    pub fn new(id: Arc<Identity>, timers: bool, mtu: usize, handshakes: HandshakeQueue) -> Self {
        let stride = (mtu + DATA_OVERHEAD).max(HANDSHAKE_MAX);
        Self {
            id,
            timers,
            handshakes,
            out: SealBufs {
                hdrs: Vec::with_capacity(MAX_SEGS * 80),
                plain: vec![0u8; 65535],
                sealed: vec![0u8; MAX_SEGS * stride],
                stride,
                lens: vec![0; MAX_SEGS],
                iov: Vec::with_capacity(MAX_SEGS),
            },
            opened: (0..RECV_BATCH).map(|_| vec![0u8; 65535]).collect(),
            scratch: vec![0u8; 65535],
            next_tick: Instant::now(),
            next_reset: Instant::now(),
        }
    }
}

impl Encap for WgEncap {
    type Table = WgTable;

    fn poll_ms(&self) -> i32 {
        TIMER_TICK.as_millis() as i32
    }

    fn table(&mut self, io: &Io, table: &WgTable) {
        if self.timers {
            self.greet(io, table);
        }
    }

    fn tick(&mut self, io: &Io, table: &WgTable) {
        if !self.timers {
            return;
        }
        let now = Instant::now();
        if now >= self.next_tick {
            self.run_timers(io, table);
            self.next_tick = now + TIMER_TICK;
        }
        if now >= self.next_reset {
            self.id.limiter.reset_count();
            self.next_reset = now + Duration::from_secs(1);
        }
    }

    fn outbound(&mut self, io: &Io, table: &WgTable, read: &mut [u8]) {
        self.seal_out(io, table, read)
    }

    fn inbound(&mut self, io: &Io, table: &WgTable, batch: &mut RecvBatch, got: &[Received]) {
        self.open_in(io, table, batch, got)
    }
}

impl WgEncap {
    /// Sends a handshake initiation to every peer not greeted yet.
    fn greet(&mut self, io: &Io, table: &WgTable) {
        for p in table.peers() {
            if p.greeted.swap(true, Ordering::Relaxed) {
                continue;
            }
            let Ok(mut t) = p.tunn.lock() else { continue };
            if let TunnResult::WriteToNetwork(msg) =
                t.format_handshake_initiation(&mut self.scratch, false)
            {
                send(io, p.endpoint, msg);
                inc(&io.counters.handshakes_sent, 1);
            }
        }
    }

    fn run_timers(&mut self, io: &Io, table: &WgTable) {
        for p in table.peers() {
            let Ok(mut t) = p.tunn.lock() else { continue };
            if let TunnResult::WriteToNetwork(msg) = t.update_timers(&mut self.scratch) {
                if msg.first() == Some(&1) {
                    inc(&io.counters.handshakes_sent, 1);
                }
                send(io, p.endpoint, msg);
            }
        }
    }

    /// TUN → peers: find the peer, cut the packet, seal each piece, send the sealed datagrams.
    fn seal_out(&mut self, io: &Io, table: &WgTable, read: &mut [u8]) {
        let c = io.counters;
        let Some(h) = VnetHdr::parse(read) else {
            return;
        };
        let out = &mut self.out;
        let pkt = &mut read[vnet::LEN..];
        let Some(dst) = dst_of(pkt) else {
            inc(&c.malformed, 1);
            return;
        };
        let Some(peer) = table.lookup(dst) else {
            // The device's own IPv6 chatter (router solicitations, MLD) goes nowhere, as on
            // a kernel WireGuard device; only unicast to nobody's subnet counts.
            let local = match dst {
                IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
                IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local(),
            };
            if !local {
                inc(&c.no_route, 1);
            }
            return;
        };
        let s = match segment(flannel_core::Family::of(dst), &h, pkt, &mut out.hdrs) {
            Ok(s) => s,
            Err(SegError::TtlExpired) => return,
            Err(_) => {
                inc(&c.malformed, 1);
                return;
            }
        };
        if s.seg_len() + DATA_OVERHEAD > out.stride {
            inc(&c.malformed, 1);
            return;
        }
        let pkt = &read[vnet::LEN..];
        let mut first = 0;
        while first < s.count {
            let k = (s.count - first).min(MAX_SEGS);
            seal(io, peer, &s, first, k, pkt, out);
            first += k;
        }
    }

    /// Peers → TUN: each datagram of the batch opened by its peer's session; replies (handshake
    /// responses, cookies, queued packets) sent back; decrypted packets checked and written.
    fn open_in(&mut self, io: &Io, table: &WgTable, batch: &RecvBatch, got: &[Received]) {
        let c = io.counters;
        let mut write = |parts: &[&[u8]]| {
            if !crate::datapath::tun::write(io.tun, parts) {
                inc(&c.errors, 1);
            }
        };
        let mut gro = Gro::default();
        let WgEncap {
            opened,
            scratch,
            id,
            handshakes,
            ..
        } = self;
        let (mut packets, mut bytes) = (0u64, 0u64);
        for ((buf, r), out) in batch.bufs.iter().zip(got).zip(opened.iter_mut()) {
            let data = &buf[..r.len];
            let seg = if r.seg > 0 { r.seg } else { data.len().max(1) };
            // Each datagram opens into the same place of `out` as it sits in `buf`: a
            // decrypted packet is shorter than its datagram, and stays put until the flush.
            let mut rest: &mut [u8] = &mut out[..];
            for d in data.chunks(seg) {
                let (slot, tail) = std::mem::take(&mut rest).split_at_mut(d.len());
                rest = tail.get_mut(seg - d.len().min(seg)..).unwrap_or_default();
                if is_handshake(d) {
                    // The handshake thread's (see `handshakes`).
                    if !handshakes.push(r.from, d) {
                        inc(&c.rx_handshake_queue_full, 1);
                    }
                    continue;
                }
                let sent = &mut |to, msg: &[u8]| send(io, to, msg);
                if let Some(pkt) = open_datagram(id, table, d, r.from, slot, scratch, c, sent) {
                    packets += 1;
                    bytes += pkt.len() as u64;
                    gro.push(pkt, &mut write);
                }
            }
        }
        gro.flush(&mut write);
        inc(&c.rx_packets, packets);
        inc(&c.rx_bytes, bytes);
    }
}

fn send(io: &Io, to: SocketAddr, msg: &[u8]) {
    if io.sock.send_one(to, msg).is_err() {
        inc(&io.counters.errors, 1);
    }
}

/// Seals segments `first..first + k` for `peer` and sends the data messages among them.
fn seal(
    io: &Io,
    peer: &PeerState,
    s: &Segments,
    first: usize,
    k: usize,
    pkt: &[u8],
    b: &mut SealBufs,
) {
    let c = io.counters;
    // The session is locked per segment, not per batch: the receiving worker needs it
    // too (for this peer's ACKs), and must not wait for a whole super-packet's sealing.
    let (mut packets, mut bytes) = (0u64, 0u64);
    for i in 0..k {
        let plain: &[u8] = if s.hdr_len == 0 {
            &pkt[s.payload_start..s.payload_end]
        } else {
            let (hdr, payload) = s.parts(first + i, &b.hdrs, pkt);
            b.plain[..hdr.len()].copy_from_slice(hdr);
            b.plain[hdr.len()..hdr.len() + payload.len()].copy_from_slice(payload);
            &b.plain[..hdr.len() + payload.len()]
        };
        let slot = &mut b.sealed[i * b.stride..(i + 1) * b.stride];
        b.lens[i] = 0;
        let Ok(mut t) = peer.tunn.lock() else { return };
        match t.encapsulate(plain, slot) {
            TunnResult::WriteToNetwork(msg) if msg.first() == Some(&4) => {
                b.lens[i] = msg.len();
                packets += 1;
                bytes += plain.len() as u64;
            }
            // No session yet: the packet waits in the tunnel's queue; this is the
            // handshake initiation that will open one.
            TunnResult::WriteToNetwork(msg) => {
                drop(t);
                inc(&c.handshakes_sent, 1);
                send(io, peer.endpoint, msg);
            }
            TunnResult::Err(_) => inc(&c.errors, 1),
            _ => {}
        }
    }
    // Counted once per batch: the counters' cache line is shared with the other workers.
    inc(&c.tx_packets, packets);
    inc(&c.tx_bytes, bytes);
    send_sealed(io, peer.endpoint, k, b);
}

/// Sends the sealed data messages of the first `k` slots: runs of equal length (all but
/// the last segment of a packet are) go out as one UDP GSO send.
fn send_sealed(io: &Io, to: SocketAddr, k: usize, b: &mut SealBufs) {
    let c = io.counters;
    let mut i = 0;
    while i < k {
        if b.lens[i] == 0 {
            i += 1;
            continue;
        }
        let len = b.lens[i];
        b.iov.clear();
        let mut j = i;
        let per_send = if io.sock.gso() { 65507 / len } else { 1 };
        while j < k && b.lens[j] != 0 && b.iov.len() < per_send.max(1) {
            b.iov.push(libc::iovec {
                iov_base: b.sealed[j * b.stride..].as_ptr() as *mut libc::c_void,
                iov_len: b.lens[j],
            });
            j += 1;
            // A shorter datagram may only end a GSO send.
            if b.lens[j - 1] != len {
                break;
            }
        }
        let seg = if b.iov.len() > 1 { len as u16 } else { 0 };
        if let Err(e) = io.sock.send_iov(to, &b.iov, seg) {
            if seg > 0 && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) {
                // No UDP GSO here: one datagram per send.
                for v in &b.iov {
                    // SAFETY: the iovecs point into b.sealed, alive and unchanged.
                    let d =
                        unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                    send(io, to, d);
                }
            } else {
                inc(&c.errors, 1);
            }
        }
        i = j;
    }
}

/// Opens one datagram from `from` into `slot` (as long as the datagram: room for the decrypted
/// packet, 16 bytes shorter, or for our answer to a handshake message, 92 bytes at most): finds
/// the peer (by public key for an initiation, by our session index otherwise), lets its Noise
/// session decide, sends what must be answered, and returns a decrypted packet only if its
/// source lies in that peer's allowed IPs. Every refusal is counted.
#[allow(clippy::too_many_arguments)]
pub fn open_datagram<'s>(
    id: &Identity,
    table: &WgTable,
    d: &[u8],
    from: SocketAddr,
    slot: &'s mut [u8],
    scratch: &mut [u8],
    c: &Counters,
    send: &mut impl FnMut(SocketAddr, &[u8]),
) -> Option<&'s [u8]> {
    let peer = match Tunn::parse_incoming_packet(d) {
        Ok(Packet::HandshakeInit(p)) => parse_handshake_anon(&id.private, &id.public, &p)
            .ok()
            .and_then(|h| table.by_key(&h.peer_static_public)),
        Ok(Packet::HandshakeResponse(p)) => table.by_index(p.receiver_idx),
        Ok(Packet::PacketCookieReply(p)) => table.by_index(p.receiver_idx),
        Ok(Packet::PacketData(p)) => table.by_index(p.receiver_idx),
        Err(_) => {
            inc(&c.rx_invalid, 1);
            return None;
        }
    };
    let Some(peer) = peer else {
        inc(&c.rx_unknown_peer, 1);
        return None;
    };
    let Ok(mut t) = peer.tunn.lock() else {
        return None;
    };
    let (pkt, src) = match t.decapsulate(Some(from.ip()), d, slot) {
        TunnResult::WriteToNetwork(msg) => {
            send(from, msg);
            // Packets queued while the handshake was under way go now.
            while let TunnResult::WriteToNetwork(msg) = t.decapsulate(None, &[], scratch) {
                send(peer.endpoint, msg);
            }
            return None;
        }
        TunnResult::WriteToTunnelV4(pkt, src) => (pkt, IpAddr::V4(src)),
        TunnResult::WriteToTunnelV6(pkt, src) => (pkt, IpAddr::V6(src)),
        // A duplicate or late handshake message; keepalives (nothing to deliver).
        TunnResult::Err(WireGuardError::UnexpectedPacket) | TunnResult::Done => return None,
        TunnResult::Err(e) => {
            tracing::debug!(error = ?e, %from, "wireguard datagram refused");
            inc(&c.rx_invalid, 1);
            return None;
        }
    };
    if peer.allows(src) {
        Some(pkt)
    } else {
        inc(&c.rx_spoofed_source, 1);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::packet::tests::tcp_packet;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    const PEER_AT: &str = "10.0.0.52:51820";

    /// Our identity, a table with one peer (allowed 10.244.1.0/24) and that peer's own
    /// tunnel towards us, as a remote WireGuard would hold it.
    fn setup() -> (Identity, WgTable, Tunn) {
        let ours = StaticSecret::from([1u8; 32]);
        let theirs = StaticSecret::from([2u8; 32]);
        let (our_pub, their_pub) = (PublicKey::from(&ours), PublicKey::from(&theirs));
        let id = Identity {
            limiter: Arc::new(RateLimiter::new(&our_pub, 100)),
            private: ours.clone(),
            public: our_pub,
        };
        let peer = Arc::new(PeerState {
            key: their_pub.to_bytes(),
            endpoint: PEER_AT.parse().unwrap(),
            allowed: vec!["10.244.1.0/24".parse().unwrap()],
            index: 7,
            tunn: Mutex::new(Tunn::new(
                ours,
                their_pub,
                None,
                None,
                7,
                Some(id.limiter.clone()),
            )),
            greeted: AtomicBool::new(true),
        });
        let remote = Tunn::new(theirs, our_pub, None, None, 9, None);
        (id, WgTable::new(vec![peer]), remote)
    }

    /// A TCP packet from `src` to 10.244.2.3 (our pod).
    fn from(src: [u8; 4]) -> Vec<u8> {
        let mut p = tcp_packet(1, 0x10, b"hello");
        p[12..16].copy_from_slice(&src);
        p
    }

    #[test]
    fn handshake_then_data_and_a_source_outside_the_peer_is_dropped_and_counted() {
        let (id, table, mut remote) = setup();
        let c = Counters::default();
        let at: SocketAddr = PEER_AT.parse().unwrap();
        let sent: std::cell::RefCell<Vec<Vec<u8>>> = Default::default();
        let mut send = |_: SocketAddr, m: &[u8]| sent.borrow_mut().push(m.to_vec());
        let (mut buf, mut slot, mut scratch) = ([0u8; 2048], [0u8; 2048], [0u8; 2048]);
        let mut open = |d: &[u8], send: &mut dyn FnMut(SocketAddr, &[u8])| -> Option<Vec<u8>> {
            let s = &mut slot[..d.len()];
            open_datagram(&id, &table, d, at, s, &mut scratch, &c, &mut |t, m| {
                send(t, m)
            })
            .map(<[u8]>::to_vec)
        };
        // The remote initiates; we answer; its keepalive confirms the session.
        let init = match remote.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(open(&init, &mut send), None);
        assert_eq!(sent.borrow().len(), 1, "a handshake response");
        let response = sent.borrow()[0].clone();
        let keepalive = match remote.decapsulate(None, &response, &mut buf) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(open(&keepalive, &mut send), None);
        // Data from inside the peer's subnet is delivered.
        let good = from([10, 244, 1, 5]);
        let sealed = match remote.encapsulate(&good, &mut buf) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(open(&sealed, &mut send).as_deref(), Some(&good[..]));
        // Another node's subnet as the source: authentic, but not this peer's to send.
        let spoofed = from([10, 244, 3, 5]);
        let sealed = match remote.encapsulate(&spoofed, &mut buf) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(open(&sealed, &mut send), None);
        assert_eq!(c.rx_spoofed_source.load(Ordering::Relaxed), 1);
        // The same datagram again is a replay; a flipped byte fails authentication.
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&sealed, &mut send), None);
        assert_eq!(open(&tampered, &mut send), None);
        assert_eq!(c.rx_invalid.load(Ordering::Relaxed), 2);
        // A session index nobody of ours handed out; garbage.
        let mut stranger = sealed.clone();
        stranger[4..8].copy_from_slice(&(99u32 << 8).to_le_bytes());
        assert_eq!(open(&stranger, &mut send), None);
        assert_eq!(c.rx_unknown_peer.load(Ordering::Relaxed), 1);
        assert_eq!(open(&[9, 9, 9], &mut send), None);
        assert_eq!(c.rx_invalid.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_initiation_from_an_unknown_key_is_not_answered() {
        let (id, table, _) = setup();
        let c = Counters::default();
        let stranger = StaticSecret::from([3u8; 32]);
        let mut t = Tunn::new(stranger, id.public, None, None, 1, None);
        let mut buf = [0u8; 256];
        let init = match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        let mut answered = false;
        let mut slot = vec![0u8; init.len()];
        let got = open_datagram(
            &id,
            &table,
            &init,
            PEER_AT.parse().unwrap(),
            &mut slot,
            &mut [0u8; 256],
            &c,
            &mut |_, _| answered = true,
        );
        assert!(got.is_none() && !answered);
        assert_eq!(c.rx_unknown_peer.load(Ordering::Relaxed), 1);
    }
}

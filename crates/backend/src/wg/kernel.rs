//! Kernel WireGuard, where the module is loaded: the device is a `wireguard` link (rtnetlink)
//! configured over generic netlink (`WG_CMD_SET_DEVICE`, linux/wireguard.h) with our private
//! key, listen port and the whole peer set (`WGDEVICE_F_REPLACE_PEERS`), as upstream's
//! flanneld does through wgctrl. The messages are built here as bytes and unit-tested against
//! the kernel's layout; the running path is NOT exercised on the machines this project is
//! tested on (their kernels have no WireGuard module), so the userspace path is what the lab
//! and CI run. `FLANNEL_WIREGUARD_KERNEL=0` forces the userspace path on any kernel.

use crate::wg::config::{Key, WgPeer};
use ipnet::IpNet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_F_REPLACE_PEERS: u32 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// Peers per message: a message stays well under the kernel's default genetlink buffer (the
/// `wg` tool splits its messages too; only the first replaces the peer set).
const PEERS_PER_MESSAGE: usize = 16;

/// A netlink message under construction: header, then attributes (nests patched on close).
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn u16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_ne_bytes());
    }

    fn u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_ne_bytes());
    }

    fn open(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn close(&mut self) {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `struct sockaddr_in` / `sockaddr_in6` as the kernel reads `WGPEER_A_ENDPOINT`.
fn sockaddr(a: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    match a {
        SocketAddr::V4(a) => {
            v.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            v.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.flowinfo().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    v
}

/// How our devices' peers are set up: the same for every message of one update.
#[derive(Debug, Clone, Copy)]
pub struct DeviceConfig<'a> {
    pub ifname: &'a str,
    pub private: &'a Key,
    pub port: u16,
    pub psk: Option<&'a Key>,
    pub keepalive: u16,
}

/// `CTRL_CMD_GETFAMILY "wireguard"`: asks for the family's id.
pub fn get_family_message(seq: u32) -> Vec<u8> {
    let mut m = Msg::new(GENL_ID_CTRL, NLM_F_REQUEST, seq, CTRL_CMD_GETFAMILY, 1);
    let mut name = WG_GENL_NAME.as_bytes().to_vec();
    name.push(0);
    m.attr(CTRL_ATTR_FAMILY_NAME, &name);
    m.finish()
}

/// The attributes of a reply (after its netlink and genetlink headers).
fn attrs(reply: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = reply.get(20..).unwrap_or_default();
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(rest.get(2..4)?.try_into().ok()?) & !NLA_F_NESTED;
        let payload = rest.get(4..len)?;
        rest = rest.get(len.div_ceil(4) * 4..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// The family id in a `CTRL_CMD_GETFAMILY` reply.
pub fn parse_family_id(reply: &[u8]) -> Option<u16> {
    attrs(reply)
        .find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, p)| Some(u16::from_ne_bytes(p.get(0..2)?.try_into().ok()?)))
}

/// `WG_CMD_SET_DEVICE` messages that make device `cfg.ifname` hold exactly `peers`: the first
/// sets key and port and replaces the peer set, the rest add the remaining peers.
pub fn set_device_messages(
    family: u16,
    cfg: DeviceConfig<'_>,
    peers: &[WgPeer],
    seq: u32,
) -> Vec<Vec<u8>> {
    let chunks: Vec<&[WgPeer]> = if peers.is_empty() {
        vec![&[]]
    } else {
        peers.chunks(PEERS_PER_MESSAGE).collect()
    };
    let mut ifname = cfg.ifname.as_bytes().to_vec();
    ifname.push(0);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut m = Msg::new(
                family,
                NLM_F_REQUEST | NLM_F_ACK,
                seq + i as u32,
                WG_CMD_SET_DEVICE,
                WG_GENL_VERSION,
            );
            m.attr(WGDEVICE_A_IFNAME, &ifname);
            if i == 0 {
                m.attr(WGDEVICE_A_PRIVATE_KEY, cfg.private);
                m.u16(WGDEVICE_A_LISTEN_PORT, cfg.port);
                m.u32(WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS);
            }
            m.open(WGDEVICE_A_PEERS);
            for (j, p) in chunk.iter().enumerate() {
                m.open(j as u16);
                m.attr(WGPEER_A_PUBLIC_KEY, &p.public_key);
                if let Some(psk) = cfg.psk {
                    m.attr(WGPEER_A_PRESHARED_KEY, psk);
                }
                m.u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS);
                m.attr(WGPEER_A_ENDPOINT, &sockaddr(p.endpoint));
                m.u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, cfg.keepalive);
                m.open(WGPEER_A_ALLOWEDIPS);
                for (k, n) in p.allowed.iter().enumerate() {
                    m.open(k as u16);
                    match n {
                        IpNet::V4(n) => {
                            m.u16(WGALLOWEDIP_A_FAMILY, libc::AF_INET as u16);
                            m.attr(WGALLOWEDIP_A_IPADDR, &n.network().octets());
                        }
                        IpNet::V6(n) => {
                            m.u16(WGALLOWEDIP_A_FAMILY, libc::AF_INET6 as u16);
                            m.attr(WGALLOWEDIP_A_IPADDR, &n.network().octets());
                        }
                    }
                    m.attr(WGALLOWEDIP_A_CIDR_MASK, &[n.prefix_len()]);
                    m.close();
                }
                m.close();
                m.close();
            }
            m.close();
            m.finish()
        })
        .collect()
}

/// The error of a netlink ack (`NLMSG_ERROR`): `None` for success.
pub fn ack_error(reply: &[u8]) -> Option<Result<(), i32>> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let code = i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?);
    Some(if code == 0 { Ok(()) } else { Err(-code) })
}

/// A generic netlink socket talking to the kernel's WireGuard family.
pub struct KernelWg {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

impl KernelWg {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut k = Self {
            fd,
            family: 0,
            seq: 1,
        };
        let reply = k.request(&get_family_message(k.seq))?;
        k.family = parse_family_id(&reply).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the kernel has no wireguard genetlink family",
            )
        })?;
        Ok(k)
    }

    fn request(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        // SAFETY: send(2) of our buffer to the kernel (the socket's default peer).
        if unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16384];
        // SAFETY: recv(2) into our buffer.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        if let Some(Err(errno)) = ack_error(&buf) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(buf)
    }

    /// Makes the device hold exactly `peers` (and our key and port).
    pub fn set_device(&mut self, cfg: DeviceConfig<'_>, peers: &[WgPeer]) -> io::Result<()> {
        for m in set_device_messages(self.family, cfg, peers, self.seq) {
            self.request(&m)?;
        }
        Ok(())
    }
}

/// Whether flanneld should try kernel WireGuard first (`FLANNEL_WIREGUARD_KERNEL=0` says no).
pub fn wanted() -> bool {
    std::env::var("FLANNEL_WIREGUARD_KERNEL").map_or(true, |v| v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    #[test]
    fn family_request_and_reply() {
        let m = get_family_message(5);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16_at(&m, 4), GENL_ID_CTRL);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 5);
        assert_eq!(m[16], CTRL_CMD_GETFAMILY);
        // One attribute: len 14 ("wireguard\0" + 4), type 2, padded to 16.
        assert_eq!(
            (u16_at(&m, 20), u16_at(&m, 22)),
            (14, CTRL_ATTR_FAMILY_NAME)
        );
        assert_eq!(&m[24..34], b"wireguard\0");
        assert_eq!(m.len(), 20 + 16);
        // A reply carrying CTRL_ATTR_FAMILY_NAME then CTRL_ATTR_FAMILY_ID 0x1b.
        let mut r = m.clone();
        r.extend_from_slice(&6u16.to_ne_bytes());
        r.extend_from_slice(&CTRL_ATTR_FAMILY_ID.to_ne_bytes());
        r.extend_from_slice(&0x1bu16.to_ne_bytes());
        r.extend_from_slice(&[0, 0]);
        assert_eq!(parse_family_id(&r), Some(0x1b));
        assert_eq!(parse_family_id(&r[..20]), None);
        assert_eq!(parse_family_id(&[1, 2, 3]), None);
    }

    /// Walks nested attributes, checking every length stays inside its parent.
    fn walk(b: &[u8], depth: usize, out: &mut Vec<(usize, u16, Vec<u8>)>) {
        let mut i = 0;
        while i + 4 <= b.len() {
            let len = usize::from(u16_at(b, i));
            let kind = u16_at(b, i + 2);
            assert!(
                len >= 4 && i + len <= b.len(),
                "attribute overruns its parent"
            );
            let payload = &b[i + 4..i + len];
            out.push((depth, kind, payload.to_vec()));
            if kind & NLA_F_NESTED != 0 {
                walk(payload, depth + 1, out);
            }
            i += len.div_ceil(4) * 4;
        }
    }

    #[test]
    fn set_device_carries_key_port_peers_endpoints_and_allowed_ips() {
        let peers = vec![
            WgPeer {
                public_key: [7; 32],
                endpoint: "10.0.0.52:51820".parse().unwrap(),
                allowed: vec![
                    "10.244.2.0/24".parse().unwrap(),
                    "fd10:2::/64".parse().unwrap(),
                ],
            },
            WgPeer {
                public_key: [8; 32],
                endpoint: "[fd00::53]:51821".parse().unwrap(),
                allowed: vec!["fd10:3::/64".parse().unwrap()],
            },
        ];
        let cfg = DeviceConfig {
            ifname: "flannel-wg",
            private: &[1; 32],
            port: 51820,
            psk: Some(&[9; 32]),
            keepalive: 25,
        };
        let msgs = set_device_messages(0x1b, cfg, &peers, 100);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16_at(m, 4), 0x1b);
        assert_eq!(u16_at(m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!((m[16], m[17]), (WG_CMD_SET_DEVICE, WG_GENL_VERSION));
        let mut a = Vec::new();
        walk(&m[20..], 0, &mut a);
        let top: Vec<u16> = a.iter().filter(|x| x.0 == 0).map(|x| x.1).collect();
        assert_eq!(
            top,
            vec![
                WGDEVICE_A_IFNAME,
                WGDEVICE_A_PRIVATE_KEY,
                WGDEVICE_A_LISTEN_PORT,
                WGDEVICE_A_FLAGS,
                WGDEVICE_A_PEERS | NLA_F_NESTED
            ]
        );
        assert_eq!(a[0].2, b"flannel-wg\0");
        assert_eq!(a[1].2, vec![1; 32]);
        assert_eq!(a[2].2, 51820u16.to_ne_bytes());
        assert_eq!(a[3].2, WGDEVICE_F_REPLACE_PEERS.to_ne_bytes());
        // Two peers (nested, indexes 0 and 1), each with key, psk, flags, endpoint, keepalive,
        // allowed IPs.
        let peers_at: Vec<&(usize, u16, Vec<u8>)> = a.iter().filter(|x| x.0 == 1).collect();
        assert_eq!(
            peers_at.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![NLA_F_NESTED, 1 | NLA_F_NESTED]
        );
        let fields: Vec<(u16, &Vec<u8>)> =
            a.iter().filter(|x| x.0 == 2).map(|x| (x.1, &x.2)).collect();
        assert_eq!(fields[0], (WGPEER_A_PUBLIC_KEY, &vec![7; 32]));
        assert_eq!(fields[1], (WGPEER_A_PRESHARED_KEY, &vec![9; 32]));
        assert_eq!(
            fields[2],
            (
                WGPEER_A_FLAGS,
                &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes().to_vec()
            )
        );
        let ep4 = fields[3].1;
        assert_eq!(fields[3].0, WGPEER_A_ENDPOINT);
        assert_eq!(
            (u16_at(ep4, 0), &ep4[2..4], &ep4[4..8], ep4.len()),
            (2, &[0xca, 0x6c][..], &[10, 0, 0, 52][..], 16)
        );
        assert_eq!(
            fields[4],
            (
                WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
                &25u16.to_ne_bytes().to_vec()
            )
        );
        assert_eq!(fields[5].0, WGPEER_A_ALLOWEDIPS | NLA_F_NESTED);
        let ep6 = fields[9].1;
        assert_eq!((u16_at(ep6, 0), ep6.len()), (10, 28));
        assert_eq!(
            &ep6[8..24],
            &"fd00::53".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        // Allowed IPs of peer 1: 10.244.2.0/24 and fd10:2::/64.
        let ips: Vec<(u16, &Vec<u8>)> =
            a.iter().filter(|x| x.0 == 4).map(|x| (x.1, &x.2)).collect();
        assert_eq!(ips[0], (WGALLOWEDIP_A_FAMILY, &2u16.to_ne_bytes().to_vec()));
        assert_eq!(ips[1], (WGALLOWEDIP_A_IPADDR, &vec![10, 244, 2, 0]));
        assert_eq!(ips[2], (WGALLOWEDIP_A_CIDR_MASK, &vec![24]));
        assert_eq!(ips[3].1, &10u16.to_ne_bytes().to_vec());
        assert_eq!(ips[5], (WGALLOWEDIP_A_CIDR_MASK, &vec![64]));
    }

    #[test]
    fn large_peer_sets_are_split_and_only_the_first_message_replaces() {
        let peers: Vec<WgPeer> = (0..40u8)
            .map(|i| WgPeer {
                public_key: [i; 32],
                endpoint: SocketAddr::from(([10, 0, 1, i], 51820)),
                allowed: vec![format!("10.244.{i}.0/24").parse().unwrap()],
            })
            .collect();
        let cfg = DeviceConfig {
            ifname: "flannel-wg",
            private: &[1; 32],
            port: 51820,
            psk: None,
            keepalive: 0,
        };
        let msgs = set_device_messages(0x1b, cfg, &peers, 1);
        assert_eq!(msgs.len(), 3);
        for (i, m) in msgs.iter().enumerate() {
            let mut a = Vec::new();
            walk(&m[20..], 0, &mut a);
            let replaces = a.iter().any(|x| x.0 == 0 && x.1 == WGDEVICE_A_FLAGS);
            assert_eq!(replaces, i == 0);
            assert!(m.len() < 8192, "{} bytes", m.len());
        }
        // No peers at all: one message that empties the device.
        assert_eq!(set_device_messages(0x1b, cfg, &[], 1).len(), 1);
    }

    #[test]
    fn acks_are_read() {
        let mut ok = vec![0u8; 36];
        ok[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_error(&ok), Some(Ok(())));
        ok[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(ack_error(&ok), Some(Err(libc::ENODEV)));
        assert_eq!(ack_error(&[0; 3]), None);
    }
}

//! The UDP socket of a worker: SO_REUSEPORT (one socket per worker on the same port), large
//! buffers, UDP GRO on receive, UDP GSO (`UDP_SEGMENT`) on send, `recvmmsg` batches.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::gso::Segments;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// The kernel's UDP_MAX_SEGMENTS on older kernels (newer ones take more).
const MAX_GSO_SEGMENTS: usize = 64;
/// The largest UDP payload over IPv4.
const MAX_GSO_BYTES: usize = 65507;
/// wireguard-go found 7 MB buffers avoid drops at 10 Gbit/s.
const SOCK_BUF: libc::c_int = 7 << 20;

fn setsockopt_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: setsockopt(2) with a pointer to an int and its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        ) == 0
    }
}

/// `a` as a socket address for a socket of family `v6` (IPv4 addresses v4-mapped there).
fn sockaddr(a: SocketAddr, v6: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { zeroed() };
    let ip6 = match a.ip() {
        IpAddr::V4(ip) if !v6 => {
            // SAFETY: sockaddr_storage is large enough for, and aligned as, a sockaddr_in.
            let s = unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(ip).to_be();
            return (st, size_of::<libc::sockaddr_in>() as u32);
        }
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    };
    // SAFETY: as above, for a sockaddr_in6.
    let s = unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in6) };
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_port = a.port().to_be();
    s.sin6_addr.s6_addr = ip6.octets();
    (st, size_of::<libc::sockaddr_in6>() as u32)
}

/// The sender of a datagram (a v4-mapped IPv6 address as the IPv4 address it stands for).
fn from_sockaddr(st: &libc::sockaddr_storage) -> SocketAddr {
    if st.ss_family == libc::AF_INET6 as libc::sa_family_t {
        // SAFETY: the kernel wrote a sockaddr_in6 (its family says so).
        let s = unsafe { &*(st as *const _ as *const libc::sockaddr_in6) };
        let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
        let port = u16::from_be(s.sin6_port);
        return match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
            None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, s.sin6_scope_id)),
        };
    }
    // SAFETY: otherwise a sockaddr_in (or nothing, all zeros).
    let s = unsafe { &*(st as *const _ as *const libc::sockaddr_in) };
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    ))
}

/// A bound, non-blocking UDP socket; `gro` tells whether the kernel coalesces on receive.
pub struct Sock {
    pub fd: OwnedFd,
    pub gro: bool,
    /// UDP GSO works here (cleared the first time the kernel refuses it; a worker's own
    /// socket, so a `Cell`).
    gso: std::cell::Cell<bool>,
    /// An IPv6 socket (IPv4 peers as v4-mapped addresses when it is dual-stack).
    v6: bool,
}

impl Sock {
    /// Whether UDP GSO works on this socket (as far as it has been tried).
    pub fn gso(&self) -> bool {
        self.gso.get()
    }

    /// Binds `addr`; an IPv6 address binds an IPv6-only socket.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, true)
    }

    /// Binds `[::]:port` for both families (IPv4 senders arrive v4-mapped).
    pub fn bind_dual(port: u16) -> io::Result<Self> {
        Self::bind_with(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            false,
        )
    }

    fn bind_with(addr: SocketAddr, v6only: bool) -> io::Result<Self> {
        let v6 = addr.is_ipv6();
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
        if !setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCK_BUF) {
            setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCK_BUF);
        }
        if !setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCK_BUF) {
            setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SOCK_BUF);
        }
        if v6 {
            setsockopt_int(
                &fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                i32::from(v6only),
            );
        }
        let (sa, len) = sockaddr(addr, v6);
        // SAFETY: bind(2) with a socket address and its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let gro = setsockopt_int(&fd, SOL_UDP, UDP_GRO, 1);
        Ok(Self {
            fd,
            gro,
            gso: std::cell::Cell::new(true),
            v6,
        })
    }

    /// Sends the segments of one outbound packet to `dst`: scatter-gather from their headers
    /// and payloads, up to 64 segments per UDP GSO send (the kernel cuts them into one
    /// datagram each); one datagram per send where GSO is refused.
    pub fn send_segments(
        &self,
        dst: SocketAddr,
        s: &Segments,
        hdrs: &[u8],
        pkt: &[u8],
        iov: &mut Vec<libc::iovec>,
    ) -> io::Result<()> {
        let seg_len = s.seg_len();
        let per_send = if self.gso.get() && s.count > 1 {
            (MAX_GSO_BYTES / seg_len).clamp(1, MAX_GSO_SEGMENTS)
        } else {
            1
        };
        let mut i = 0;
        while i < s.count {
            let n = per_send.min(s.count - i);
            iov.clear();
            for k in i..i + n {
                let (h, p) = s.parts(k, hdrs, pkt);
                for part in [h, p] {
                    if !part.is_empty() {
                        iov.push(libc::iovec {
                            iov_base: part.as_ptr() as *mut libc::c_void,
                            iov_len: part.len(),
                        });
                    }
                }
            }
            let gso = if n > 1 { seg_len as u16 } else { 0 };
            match self.send_iov(dst, iov, gso) {
                Ok(()) => i += n,
                // EIO: the device cannot checksum-offload; EINVAL: no UDP GSO here.
                Err(e)
                    if gso > 0
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    self.gso.set(false);
                    return self.send_segments(
                        dst,
                        &Segments {
                            count: s.count - i,
                            payload_start: s.payload_start + i * s.gso,
                            ..*s
                        },
                        &hdrs[i * s.hdr_len..],
                        pkt,
                        iov,
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Another handle on the same socket (for a thread that only sends from its port).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            gro: self.gro,
            gso: self.gso.clone(),
            v6: self.v6,
        })
    }

    /// Sends one buffer as one datagram.
    pub fn send_one(&self, dst: SocketAddr, buf: &[u8]) -> io::Result<()> {
        let iov = [libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }];
        self.send_iov(dst, &iov, 0)
    }

    /// Sends the buffers in `iov` to `dst`: one datagram, or with `seg` > 0 datagrams of `seg`
    /// bytes cut by the kernel (UDP GSO; the last may be shorter).
    pub fn send_iov(&self, dst: SocketAddr, iov: &[libc::iovec], seg: u16) -> io::Result<()> {
        let (mut sa, len) = sockaddr(dst, self.v6);
        // Room for one cmsg carrying a u16, 8-byte aligned.
        let mut cbuf = [0u64; 4];
        // SAFETY: msghdr is plain old data; we fill the fields sendmsg reads.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = &mut sa as *mut _ as *mut libc::c_void;
        msg.msg_namelen = len;
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        if seg > 0 {
            // SAFETY: CMSG_* compute sizes and pointers within cbuf, which is large enough.
            unsafe {
                msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
            }
        }
        loop {
            // SAFETY: msg points at live buffers for the duration of the call.
            let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A full socket buffer: wait for room rather than drop (TCP would back off anyway).
                Some(libc::EAGAIN) => {
                    let mut p = libc::pollfd {
                        fd: self.fd.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: poll(2) on one pollfd.
                    unsafe { libc::poll(&mut p, 1, 100) };
                }
                _ => return Err(e),
            }
        }
    }
}

/// Reusable `recvmmsg` state: `n` buffers of 64 KB (UDP GRO delivers up to that at once).
pub struct RecvBatch {
    pub bufs: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; 8]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

/// One received message: length, sender, and the GRO segment size (0 = one datagram).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub seg: usize,
}

impl RecvBatch {
    pub fn new(n: usize) -> Self {
        Self {
            bufs: (0..n).map(|_| vec![0u8; 65535]).collect(),
            // SAFETY: plain old data, zero is valid.
            names: (0..n).map(|_| unsafe { zeroed() }).collect(),
            ctrl: vec![[0u64; 8]; n],
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
        }
    }

    /// One `recvmmsg`; fills `out` (cleared first). `Ok(0)` when nothing is waiting.
    pub fn recv(&mut self, fd: &OwnedFd, out: &mut Vec<Received>) -> io::Result<usize> {
        out.clear();
        self.iovs.clear();
        self.hdrs.clear();
        for b in self.bufs.iter_mut() {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            });
        }
        for i in 0..self.bufs.len() {
            // SAFETY: plain old data; pointers below refer to our own vectors, which are not
            // resized until the call returns.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_controllen = size_of::<[u64; 8]>();
            self.hdrs.push(h);
        }
        // SAFETY: hdrs/iovs/names/ctrl stay alive and unmoved during the call.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        for i in 0..n as usize {
            let h = &self.hdrs[i];
            let mut seg = 0usize;
            // SAFETY: walking the control messages the kernel wrote into ctrl[i].
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        seg = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u16) as usize;
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            let from = from_sockaddr(&self.names[i]);
            out.push(Received {
                len: h.msg_len as usize,
                from,
                seg,
            });
        }
        Ok(n as usize)
    }
}

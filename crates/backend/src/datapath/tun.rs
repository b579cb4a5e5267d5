//! The TUN device: `/dev/net/tun` with IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
//! one file descriptor per queue, and the offloads the kernel accepts (TSO, then USO).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFF_TUN: i16 = 0x0001;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Which offloads the device took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    pub tso: bool,
    pub uso: bool,
}

fn open_queue(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: open(2) on a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
        _pad: [0; 22],
    };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_offload(fd: &OwnedFd, flags: u32) -> bool {
    // SAFETY: TUNSETOFFLOAD takes an unsigned int by value.
    unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) >= 0 }
}

/// Opens `queues` queues of TUN device `name` (created by the first, removed when the last
/// closes) and turns on what the kernel takes: checksum + TSO, and USO where supported (≥ 6.2).
pub fn open(name: &str, queues: usize) -> io::Result<(Vec<OwnedFd>, Offloads)> {
    open_with(name, queues, true)
}

/// As [`open`]; with `uso` false the device is offered checksum + TSO (IPv4 and IPv6) only,
/// never UDP segmentation (the wireguard backend cuts TCP super-packets of both families).
pub fn open_with(name: &str, queues: usize, uso: bool) -> io::Result<(Vec<OwnedFd>, Offloads)> {
    if !uso {
        let fds = (0..queues.max(1))
            .map(|_| open_queue(name))
            .collect::<io::Result<Vec<_>>>()?;
        let tso = fds
            .iter()
            .all(|f| set_offload(f, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6));
        if !tso {
            for f in &fds {
                set_offload(f, 0);
            }
        }
        return Ok((fds, Offloads { tso, uso: false }));
    }
    let fds = (0..queues.max(1))
        .map(|_| open_queue(name))
        .collect::<io::Result<Vec<_>>>()?;
    let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    let off = if fds.iter().all(|f| set_offload(f, all)) {
        Offloads {
            tso: true,
            uso: true,
        }
    } else if fds.iter().all(|f| set_offload(f, tso)) {
        Offloads {
            tso: true,
            uso: false,
        }
    } else {
        for f in &fds {
            set_offload(f, 0);
        }
        Offloads::default()
    };
    Ok((fds, off))
}

/// One packet into the TUN device from its pieces (vnet header first), with one `writev`;
/// whether the kernel took it. At most a coalesced packet's pieces (header, first segment and
/// the payloads of the others) are written.
pub fn write(fd: &OwnedFd, parts: &[&[u8]]) -> bool {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; super::gro::MAX_SEGS + 3];
    let n = parts.len().min(iov.len());
    for (v, p) in iov.iter_mut().zip(parts) {
        *v = libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        };
    }
    // SAFETY: writev(2) with iovecs pointing at live slices.
    unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as i32) >= 0 }
}

//! The userspace data path shared by the udp and wireguard backends: a multiqueue TUN device
//! with offloads (TSO/USO, `vnet` headers), UDP sockets with GSO/GRO and batched syscalls, and
//! the packet surgery between them (segmenting super-packets, coalescing for the TUN). Each
//! backend adds its own encapsulation on top: plain IP in UDP (udp), Noise sessions (wireguard).

pub mod counters;
pub mod device;
pub mod gro;
pub mod gso;
pub mod packet;
pub mod pump;
pub mod sock;
pub mod tun;
pub mod vnet;
pub mod wake;

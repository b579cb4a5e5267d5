//! The udp backend (upstream `pkg/backend/udp`): raw IPv4 packets in UDP to `<peer>:8285`
//! through a TUN device `flannel0`, built for speed on the shared userspace data path
//! (`crate::datapath`: TSO/USO on the TUN, UDP GSO/GRO on the socket, batched syscalls, one
//! worker per core).

pub mod backend;
pub mod config;
pub mod table;
pub mod worker;

// The data-path modules lived here before the wireguard backend shared them.
pub use crate::datapath::{gro, gso, packet, sock, tun, vnet};

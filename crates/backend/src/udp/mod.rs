//! The udp backend (upstream `pkg/backend/udp`): raw IPv4 packets in UDP to `<peer>:8285`
//! through a TUN device `flannel0`, built for speed (TSO/USO on the TUN, UDP GSO/GRO on the
//! socket, batched syscalls, one worker per core).

pub mod backend;
pub mod gro;
pub mod gso;
pub mod packet;
pub mod sock;
pub mod table;
pub mod tun;
pub mod vnet;
pub mod worker;

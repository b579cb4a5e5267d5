//! The wireguard backend (upstream `pkg/backend/wireguard`, spec §5.4), wire-compatible with
//! kernel WireGuard: the Noise protocol from `boringtun`'s core on our own userspace data path
//! (`crate::datapath`, shared with the udp backend), for kernels without the WireGuard module;
//! kernel WireGuard over netlink where the module is loaded (`kernel`).

pub mod backend;
pub mod config;
pub mod handshakes;
pub mod kernel;
pub mod key;
pub mod table;
pub mod worker;

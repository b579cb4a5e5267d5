//! flannel-core: the pure heart of flannel-rs.
//!
//! Plain types and functions only: no sockets, no netlink, no files except where a function
//! takes a path explicitly (subnet.env). Everything here is unit-tested without root.

pub mod allocator;
pub mod backoff;
pub mod config;
pub mod errtext;
pub mod family;
pub mod iface;
pub mod iptables;
pub mod json_ci;
pub mod lease;
pub mod mac;
pub mod nftables;
pub mod raw_json;
pub mod say_once;
pub mod state;
pub mod subnet;
pub mod subnet_env;
pub mod subnet_key;
pub mod time;

pub use config::{ConfigError, NetworkConfig};
pub use family::Family;
pub use lease::{Lease, LeaseAttrs, LeaseError};
pub use mac::MacAddr;

/// The version printed by `--version`; set `FLANNEL_RS_VERSION` at build time to override.
pub const VERSION: &str = match option_env!("FLANNEL_RS_VERSION") {
    Some(v) => v,
    None => concat!("v", env!("CARGO_PKG_VERSION")),
};

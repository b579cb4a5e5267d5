//! flannel-net: the only code that talks to the kernel's network configuration.
//!
//! [`ops::NetOps`] is what the backends ask of the kernel; [`netlink::Netlink`] wraps rtnetlink with the few domain operations flannel needs (links,
//! addresses, routes, neighbours, FDB entries); [`firewall`] installs the masquerade and forward
//! rules through [`iptables`] or [`nftables`]. All of it works in whatever network namespace the
//! calling process runs in.

pub mod br_netfilter;
pub mod dump;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(any(test, feature = "fake"))]
pub mod fake_firewall;
pub mod firewall;
pub mod iptables;
pub mod monitor;
pub mod netlink;
pub mod nftables;
pub mod ops;

pub use netlink::{Netlink, ROUTE_PROTOCOL};
pub use ops::{Family, Link, NetError, NetOps, RouteEntry, RouteWrite, VxlanInfo, VxlanSpec};

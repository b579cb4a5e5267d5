//! flannel-net: the only code that talks to the kernel's network configuration.
//!
//! [`netlink::Netlink`] wraps rtnetlink with the few domain operations flannel needs (links,
//! addresses, routes, neighbours, FDB entries); [`iptables`] drives `iptables`/`iptables-restore`.
//! Both work in whatever network namespace the calling process runs in.

pub mod iptables;
pub mod netlink;

pub use netlink::{Link, NetError, Netlink, VxlanInfo, VxlanSpec, ROUTE_PROTOCOL};

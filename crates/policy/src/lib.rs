//! Kubernetes NetworkPolicy (networking.k8s.io/v1), compiled by flanneld into nftables.
//!
//! Pure code: Pods, Namespaces and NetworkPolicies in ([`decode`] makes them from the API's
//! JSON), one node's ruleset out ([`compile::compile`]), and the nftables transaction that
//! turns the table in the kernel into it ([`ruleset::Ruleset::diff`]). Running `nft` is the
//! daemon's business.

pub mod compile;
pub mod decode;
pub mod model;
pub mod ruleset;

pub use compile::compile;
pub use model::{Namespace, Pod, Policy};
pub use ruleset::Ruleset;

/// The table flanneld owns: nothing else writes it, and flanneld writes nothing else here.
pub const TABLE: &str = "flannel-policy";
/// Its family: one table for IPv4 and IPv6.
pub const FAMILY: &str = "inet";

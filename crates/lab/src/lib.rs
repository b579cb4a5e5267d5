//! flannel-lab: a whole flannel cluster on one machine.
//!
//! Network namespaces play the parts: a switch (`<lab>-sw`, a bridge), nodes (`<lab>-master1`,
//! `<lab>-node1`, ... on `eth0` at 10.0.0.50, .51, ...) and pods (`<lab>-<node>-pod<k>`). etcd runs
//! on master1, our `flanneld` on every node, and pods are wired through our `flannel` CNI plugin
//! and Debian's `bridge`, `host-local` and `portmap`. Nothing touches the host's own network
//! namespace; every name starts with the lab's prefix, which `down` owns.

pub mod bench;
pub mod churn;
pub mod cli;
pub mod cluster;
pub mod cni_exec;
pub mod floor;
pub mod kube_node;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod nodefs;
pub mod ping;
pub mod pods;
pub mod preflight;
pub mod probe;
pub mod scale;
pub mod sh;
pub mod state;
pub mod status;
pub mod trace;

pub use cli::main;
pub use cluster::{down, up, LabSpec};
pub use names::IpFamily;
pub use state::LabState;

//! The vxlan backend (upstream `pkg/backend/vxlan`): one `flannel.<VNI>` device per family and,
//! per remote lease, a neighbour entry, an FDB entry and an onlink route.
//!
//! `config` reads the `Backend` block, `desired` computes the entries every lease asks for,
//! `delta` turns a few lease changes into writes without reading the kernel back, `backend`
//! owns the device and applies all of it.

pub mod backend;
pub mod config;
pub mod delta;
pub mod desired;

pub use backend::{VxlanBackend, VxlanNetworks};
pub use config::VxlanConfig;

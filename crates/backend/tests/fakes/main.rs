//! The backends on the fake kernel (`flannel_net::fake`), as any user: one test executable for
//! all of them, as the integration tests of crates/bin are one (each executable links the
//! crate and its dependencies again).

// A test's unwrap is its assertion (the workspace denies unwrap outside tests).
#![allow(clippy::unwrap_used)]

mod common;
mod hostgw;
mod vxlan;
mod vxlan_v6;

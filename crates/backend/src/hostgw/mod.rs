//! The host-gw backend (upstream `pkg/backend/hostgw`): a route per remote lease via the peer's
//! public address on the external interface; no device, no encapsulation.
//!
//! `desired` computes the routes every lease asks for, `backend` applies them.

pub mod backend;
pub mod desired;

pub use backend::HostGwBackend;

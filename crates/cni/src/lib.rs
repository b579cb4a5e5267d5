//! The `flannel` CNI plugin (upstream `flannel-io/cni-plugin`): reads subnet.env, builds a
//! `bridge` + `host-local` delegate config, stores it in `dataDir` before the delegate runs, and
//! replays it on DEL. Errors are CNI error objects on stdout with a non-zero exit.

pub mod attachment;
pub mod check;
pub mod delegate;
pub mod env;
pub mod error;
pub mod gc;
pub mod install;
pub mod invoke;
pub mod netconf;
pub mod netns;
pub mod plugin;
pub mod settle;
pub mod subnet_env;

pub use error::CniError;

/// CNI spec versions this plugin speaks (those of CNI library v1.3.0).
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

pub fn main() -> std::process::ExitCode {
    plugin::main()
}

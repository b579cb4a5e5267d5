//! flannel-cli: flanneld's command line, shared by flanneld and flannelctl.
//!
//! `flags` parses arguments and `FLANNELD_*` variables the way upstream's Go `flag` package
//! does; `options` turns the values into checked settings. flannelctl reads the same flags
//! (for `leases`), so both live below the daemon.

pub mod flags;
pub mod options;

pub use options::{OptionError, Options};

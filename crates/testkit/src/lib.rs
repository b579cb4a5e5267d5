//! flannel-testkit: what the lab (`flannel-lab`) and the tests share, written once.
//!
//! - [`names`]: names unique to a process and call, for namespaces and directories;
//! - [`etcd`]: a real etcd on a free loopback port (or CI's);
//! - [`netns`]: network namespaces that clean up after themselves, code run inside one;
//! - [`tempdir`]: temporary directories removed on drop;
//! - [`wait`]: polling until a condition holds (`eventually`, `wait_for`);
//! - [`procfs`]: a process's CPU seconds and memory, from `/proc`;
//! - [`parse`]: test addresses and networks from text, and test leases;
//! - [`expect`]: a daemon's refusal to run, a quiet wait through an outage.
//!
//! Real parts only: namespaces are the kernel's, made with `ip`.

pub mod etcd;
pub mod expect;
pub mod names;
pub mod netns;
pub mod parse;
pub mod procfs;
pub mod tempdir;
pub mod wait;

pub use expect::{assert_quiet_outage, expect_refusal};
pub use names::unique;
pub use netns::{in_ns, Netns};
pub use parse::{ip, net};
pub use tempdir::TempDir;
pub use wait::{eventually, wait_for};

//! Every integration test of flannel-rs in one binary: the modules below each cover one part
//! (the CNI plugin, flanneld's command line, etcd and kube modes, the lab, the image ...).
//! One binary links the whole stack once, instead of once per file; `cargo test --test it
//! MODULE::` runs one part. Tests that need root make their own namespaces and skip without
//! root (unless FLANNEL_TESTS_REQUIRE_ROOT is set, as in CI).

// A test's unwrap is its assertion (the workspace denies unwrap outside tests).
#![allow(clippy::unwrap_used)]

mod cni_plugin;
mod common;
mod deploy_manifest;
mod doctor;
mod dual_stack;
mod etcd_auth_tls;
mod etcd_subnet;
mod firewall_golden;
mod flannelctl;
mod flanneld_cli;
mod image;
mod kube_fake;
mod kube_lab;
mod kube_mode;
mod lab_e2e;
mod lease_guard;
mod list_watch;
mod metrics;
mod network_policy;
mod network_policy_node;
mod trace;
mod udp_wire;
mod wireguard;

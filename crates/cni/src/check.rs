//! CHECK inside the pod: the interface exists, carries every address of the previous result, and
//! routes every flannel network through the gateway.

use crate::env::CniEnv;
use crate::error::{code, CniError};
use flannel_core::subnet_env::SubnetFile;
use flannel_net::netlink::gw_routes_on;
use flannel_net::{Family, NetOps, Netlink};
use ipnet::IpNet;
use serde_json::Value;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

fn fail(msg: String) -> CniError {
    CniError::new(code::PLUGIN, msg)
}

/// The addresses and IPv4 gateway of a CNI result (any spec version from 0.3.0 on).
pub fn result_addresses(prev: &Value) -> (Vec<IpNet>, Option<IpAddr>) {
    let mut addrs = Vec::new();
    let mut gw = None;
    for ip in prev["ips"].as_array().into_iter().flatten() {
        if let Some(a) = ip["address"].as_str().and_then(|a| a.parse::<IpNet>().ok()) {
            addrs.push(a);
        }
        if let Some(g) = ip["gateway"]
            .as_str()
            .and_then(|g| g.parse::<IpAddr>().ok())
        {
            gw.get_or_insert(g);
        }
    }
    (addrs, gw)
}

/// Enters the pod's network namespace (this process is single-threaded here) and looks.
pub fn verify_pod(env: &CniEnv, prev: &Value, senv: &SubnetFile) -> Result<(), CniError> {
    let (addrs, gw) = result_addresses(prev);
    let ns = std::fs::File::open(&env.netns).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!("opening network namespace {}: {e}", env.netns),
        )
    })?;
    // SAFETY: setns(2) with a valid open namespace fd; no other thread exists yet.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "entering network namespace {}: {}",
                env.netns,
                std::io::Error::last_os_error()
            ),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("starting a runtime: {e}")))?;
    rt.block_on(async {
        let nl = Netlink::new().map_err(|e| fail(format!("opening netlink: {e}")))?;
        let snap = nl.iface_snapshot().await.map_err(|e| fail(e.to_string()))?;
        let link = snap.by_name(&env.ifname).ok_or_else(|| {
            fail(format!(
                "interface {} not found in {}",
                env.ifname, env.netns
            ))
        })?;
        for a in &addrs {
            if !snap
                .addrs
                .iter()
                .any(|x| x.index == link.index && x.ip == a.addr())
            {
                return Err(fail(format!(
                    "{} in {} lacks address {a}",
                    env.ifname, env.netns
                )));
            }
        }
        if let Some(IpAddr::V4(gw)) = gw {
            let table = nl
                .main_routes(Family::V4)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let routes = gw_routes_on(&table, link.index, false);
            for net in &senv.networks {
                if routes.get(&IpNet::V4(*net)) != Some(&IpAddr::V4(gw)) {
                    return Err(fail(format!(
                        "{} has no route to {net} via {gw}",
                        env.netns
                    )));
                }
            }
        }
        Ok(())
    })
}

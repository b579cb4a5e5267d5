//! Choosing the external interface (upstream `pkg/ipmatch`): `--iface` by name or IP in order,
//! else the interface holding `--public-ip`, else the default-route interface.

use crate::options::Options;
use anyhow::{anyhow, bail};
use flannel_backend::ExternalInterface;
use flannel_net::{Link, Netlink};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

pub async fn select(nl: &Netlink, o: &Options) -> anyhow::Result<ExternalInterface> {
    let links = nl.links().await?;
    let addrs = nl.ipv4_addrs(None).await?;
    let first_addr = |index: u32| -> Option<Ipv4Addr> {
        let mut a: Vec<&Ipv4Net> = addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, n)| n)
            .collect();
        // Global unicast before link-local, as upstream sorts them.
        a.sort_by_key(|n| n.addr().is_link_local());
        a.first().map(|n| n.addr())
    };
    let owner_of = |ip: Ipv4Addr| addrs.iter().find(|(_, n)| n.addr() == ip).map(|(i, _)| *i);
    let by_index = |i: u32| links.iter().find(|l| l.index == i);

    let mut tried = Vec::new();
    let mut chosen: Option<(&Link, Ipv4Addr)> = None;
    for spec in &o.ifaces {
        let hit = match spec.parse::<Ipv4Addr>() {
            Ok(ip) => owner_of(ip).and_then(by_index).map(|l| (l, ip)),
            Err(_) => links
                .iter()
                .find(|l| &l.name == spec)
                .and_then(|l| first_addr(l.index).map(|a| (l, a))),
        };
        if hit.is_some() {
            chosen = hit;
            break;
        }
        tried.push(format!("--iface={spec}"));
    }
    if chosen.is_none() && o.ifaces.is_empty() {
        if let Some(ip) = o.public_ip {
            chosen = owner_of(ip).and_then(by_index).map(|l| (l, ip));
            if chosen.is_none() {
                bail!("no interface has the --public-ip address {ip}; pass --iface to name the interface to use");
            }
        } else {
            let idx = nl.default_route_link().await?.ok_or_else(|| {
                anyhow!("no default route found; pass --iface to name the interface to use")
            })?;
            let l = by_index(idx)
                .ok_or_else(|| anyhow!("default route points at unknown link #{idx}"))?;
            let a = first_addr(idx)
                .ok_or_else(|| anyhow!("default-route interface {} has no IPv4 address", l.name))?;
            chosen = Some((l, a));
        }
    }
    let (link, iface_addr) = chosen.ok_or_else(|| {
        anyhow!(
            "no usable interface: tried {} (each must exist and have an IPv4 address)",
            tried.join(", ")
        )
    })?;
    if link.mtu == 0 {
        bail!("interface {} has MTU 0", link.name);
    }
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr,
        ext_addr: o.public_ip.unwrap_or(iface_addr),
    })
}

//! Choosing the external interface (upstream `pkg/ipmatch`): each `--iface` (name or address) in
//! order, then each `--iface-regex`, then `--iface-can-reach`; with none of those, the interface
//! holding `--public-ip`, else the default-route interface.

use anyhow::{anyhow, bail};
use flannel_backend::ExternalInterface;
use flannel_cli::Options;
use flannel_core::iface::{Families, IfaceLink, Snapshot};
use flannel_net::{Family, NetOps};
use std::net::IpAddr;

pub async fn select(
    nl: &impl NetOps,
    o: &Options,
    f: Families,
) -> anyhow::Result<ExternalInterface> {
    let snap = nl.iface_snapshot().await?;
    let mut tried = Vec::new();
    let mut chosen: Option<&IfaceLink> = None;
    // An --iface given as an address is the address to use, not just the interface.
    let mut given_ip: Option<IpAddr> = None;

    for spec in &o.ifaces {
        match snap.by_iface_flag(spec, f) {
            Ok(l) => {
                chosen = Some(l);
                given_ip = spec.parse().ok();
                break;
            }
            Err(why) => tried.push(format!("--iface={spec} ({why})")),
        }
    }
    if chosen.is_none() {
        for re in &o.iface_regex {
            match snap.by_regex(re, f) {
                Some(l) => {
                    chosen = Some(l);
                    break;
                }
                None => tried.push(format!(
                    "--iface-regex={} (no address or name matched)",
                    re.as_str()
                )),
            }
        }
    }
    if chosen.is_none() {
        if let Some(ip) = o.iface_can_reach {
            match nl.route_get(ip).await? {
                Some((idx, src)) => {
                    chosen = snap.link(idx);
                    given_ip = src;
                }
                None => tried.push(format!("--iface-can-reach={ip} (no route)")),
            }
        }
    }
    let explicit = !o.ifaces.is_empty() || !o.iface_regex.is_empty() || o.iface_can_reach.is_some();
    if chosen.is_none() && explicit {
        bail!("no usable interface: tried {}", tried.join(", "));
    }
    if chosen.is_none() {
        chosen = default_choice(nl, o, f, &snap).await?;
    }
    let link = chosen.ok_or_else(|| anyhow!("no usable interface found"))?;
    if link.mtu == 0 {
        bail!("interface {} has MTU 0", link.name);
    }
    let iface_addr = match given_ip {
        Some(IpAddr::V4(a)) => Some(a),
        _ => snap.best_v4(link.index),
    };
    let iface_v6_addr = match given_ip {
        Some(IpAddr::V6(a)) => Some(a),
        _ => snap.best_v6(link.index),
    };
    let iface_addr = match (f.v4, iface_addr) {
        (true, None) => bail!("interface {} has no usable IPv4 address", link.name),
        (true, Some(a)) => a,
        (false, a) => a.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
    };
    if f.v6 && iface_v6_addr.is_none() {
        bail!("interface {} has no usable IPv6 address", link.name);
    }
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr,
        ext_addr: o.public_ip.unwrap_or(iface_addr),
        iface_v6_addr: iface_v6_addr.filter(|_| f.v6),
        ext_v6_addr: if f.v6 {
            o.public_ipv6.or(iface_v6_addr)
        } else {
            None
        },
    })
}

/// No interface flags: the interface holding the public IP, else the default-route interface
/// (for dual stack the IPv4 and IPv6 default routes must leave through the same interface).
async fn default_choice<'a>(
    nl: &impl NetOps,
    o: &Options,
    f: Families,
    snap: &'a Snapshot,
) -> anyhow::Result<Option<&'a IfaceLink>> {
    let public = if f.v4 {
        o.public_ip.map(IpAddr::V4)
    } else {
        o.public_ipv6.map(IpAddr::V6)
    };
    if let Some(ip) = public {
        return snap.owner_of(ip).map(Some).ok_or_else(|| {
            anyhow!(
                "no interface has the public IP {ip}; pass --iface to name the interface to use"
            )
        });
    }
    let mut by_family = [None, None];
    for (on, family, slot) in [(f.v4, Family::V4, 0), (f.v6, Family::V6, 1)] {
        if on {
            by_family[slot] = nl.default_route_link(family).await?;
        }
    }
    let [v4, v6] = by_family;
    let idx = match (f.v4, f.v6, v4, v6) {
        (true, true, Some(a), Some(b)) if a != b => {
            bail!("the IPv4 and IPv6 default routes use different interfaces; pass --iface")
        }
        (true, _, Some(a), _) => a,
        (false, true, _, Some(b)) => b,
        _ => bail!("no default route found; pass --iface to name the interface to use"),
    };
    Ok(snap.link(idx))
}

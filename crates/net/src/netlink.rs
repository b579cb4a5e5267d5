//! Thin rtnetlink wrapper: typed reads of what the kernel has, and idempotent writes.

use crate::ops::{Family, Link, NetError, NetOps, RouteGet, VxlanInfo, VxlanSpec};
use flannel_core::iface::{IfaceAddr, IfaceLink, Snapshot};
use flannel_core::MacAddr;
use futures::{StreamExt, TryStreamExt};
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// The route protocol number flannel-rs stamps on the routes it installs, so it can find its
/// own routes (and only its own) again: `ip route show proto 252`. Unassigned in rt_protos.
pub const ROUTE_PROTOCOL: u8 = 252;
/// The blackhole route's metric: behind every connected or flannel route for the same prefix.
pub const BLACKHOLE_METRIC: u32 = 4096;
const RT_TABLE_MAIN: u8 = 254;

/// rtnetlink's error as ours: the kernel's errno when it refused, else the library's words.
fn net_error(op: String, e: rtnetlink::Error) -> NetError {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            NetError::kernel(op, -m.raw_code())
        }
        other => NetError::other(op, other.to_string()),
    }
}

fn ctx<T>(r: Result<T, rtnetlink::Error>, what: impl FnOnce() -> String) -> Result<T, NetError> {
    r.map_err(|e| net_error(what(), e))
}

pub use crate::ops::{gw_routes_on, RouteEntry, RouteWrite};

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(b) => l.mac = MacAddr::from_slice(b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let mut x = VxlanInfo::default();
                            for a in v {
                                match a {
                                    InfoVxlan::Id(id) => x.vni = Some(*id),
                                    InfoVxlan::Local(ip) => x.local = Some(IpAddr::V4(*ip)),
                                    InfoVxlan::Local6(ip) => x.local = Some(IpAddr::V6(*ip)),
                                    InfoVxlan::Link(i) => x.dev = Some(*i),
                                    InfoVxlan::Port(p) => x.port = Some(*p),
                                    InfoVxlan::Learning(b) => x.learning = Some(*b),
                                    _ => {}
                                }
                            }
                            l.vxlan = Some(x);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// A connection to rtnetlink in the current network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its driver on the current tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        // A large receive buffer: dumps of thousands of routes or neighbours must not hit ENOBUFS.
        let _ = conn
            .socket_mut()
            .socket_mut()
            .set_rx_buf_sz(4 * 1024 * 1024);
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Every route of `family` as rtnetlink gives it (every table, every type).
    async fn raw_routes(&self, family: Family) -> Result<Vec<RouteMessage>, NetError> {
        let msg = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        ctx(
            self.handle.route().get(msg).execute().try_collect().await,
            || format!("list {family:?} routes"),
        )
    }
}

/// An address with the flags the interface choice weighs.
fn iface_addr(m: &rtnetlink::packet_route::address::AddressMessage) -> Option<IfaceAddr> {
    let ip = addr_of(m)?;
    let flags = m
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(m.header.flags.bits())));
    Some(IfaceAddr {
        index: m.header.index,
        ip,
        permanent: flags.contains(AddressFlags::Permanent),
        // IFA_F_TEMPORARY shares its bit with IFA_F_SECONDARY.
        temporary: ip.is_ipv6() && flags.contains(AddressFlags::Secondary),
        deprecated: flags.contains(AddressFlags::Deprecated),
    })
}

/// A route message for `dst` (and `gw`, same family) with our protocol, ready for more.
fn route_to(dst: IpNet, gw: Option<IpAddr>) -> Result<RouteMessageBuilder<IpAddr>, NetError> {
    // The builder's error type is not exported; its Debug form names the problem.
    fn invalid(dst: IpNet, e: impl std::fmt::Debug) -> NetError {
        NetError::other(format!("route {dst}"), format!("{e:?}"))
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(|e| invalid(dst, e))?;
    if let Some(gw) = gw {
        if Family::of(gw) != Family::of_net(&dst) {
            return Err(NetError::other(
                format!("route {dst} via {gw}"),
                "gateway of another family".into(),
            ));
        }
        b = b.gateway(gw).map_err(|e| invalid(dst, e))?;
    }
    Ok(b)
}

fn family_filter(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

impl NetOps for Netlink {
    async fn iface_snapshot(&self) -> Result<Snapshot, NetError> {
        let links = self
            .links()
            .await?
            .into_iter()
            .map(|l| IfaceLink {
                index: l.index,
                name: l.name,
                mtu: l.mtu,
            })
            .collect();
        let msgs: Vec<_> = ctx(
            self.handle.address().get().execute().try_collect().await,
            || "list addresses".into(),
        )?;
        let addrs = msgs.iter().filter_map(iface_addr).collect();
        Ok(Snapshot { links, addrs })
    }

    async fn default_route_link(&self, family: Family) -> Result<Option<u32>, NetError> {
        Ok(self.raw_routes(family).await?.iter().find_map(|r| {
            (route_table(r) == u32::from(RT_TABLE_MAIN) && r.header.destination_prefix_length == 0)
                .then(|| route_oif(r))
                .flatten()
        }))
    }

    async fn create_wireguard(&self, name: &str) -> Result<(), NetError> {
        let m = rtnetlink::LinkWireguard::new(name).build();
        ctx(self.handle.link().add(m).execute().await, || {
            format!("create wireguard device {name}")
        })
    }

    async fn has_blackhole(&self, dst: IpNet) -> Result<bool, NetError> {
        Ok(self
            .raw_routes(Family::of_net(&dst))
            .await?
            .iter()
            .any(|r| {
                r.header.kind == RouteType::BlackHole
                    && route_table(r) == u32::from(RT_TABLE_MAIN)
                    && route_dst(r) == Some(dst)
            }))
    }

    async fn add_blackhole(&self, dst: IpNet) -> Result<(), NetError> {
        let m = route_to(dst, None)?
            .kind(RouteType::BlackHole)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .priority(BLACKHOLE_METRIC)
            .build();
        match self.handle.route().add(m).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == EEXIST => Ok(()),
            r => ctx(r, || format!("add blackhole route {dst}")),
        }
    }

    async fn links(&self) -> Result<Vec<Link>, NetError> {
        let msgs: Vec<LinkMessage> = ctx(
            self.handle.link().get().execute().try_collect().await,
            || "list links".into(),
        )?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetError> {
        let req = self.handle.link().get().match_name(name.to_string());
        one_link(req, format!("get link {name}")).await
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetError> {
        let req = self.handle.link().get().match_index(index);
        one_link(req, format!("get link #{index}")).await
    }

    async fn create_vxlan(&self, s: &VxlanSpec) -> Result<(), NetError> {
        let b = LinkVxlan::new(&s.name, s.vni).dev(s.dev);
        let mut b = match s.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        }
        .ttl(0)
        .tos(0)
        .learning(s.learning)
        .proxy(false)
        .rsc(false)
        .l2miss(false)
        .l3miss(false)
        .mtu(s.mtu)
        .address(s.mac.0.to_vec());
        if s.port > 0 {
            b = b.port(s.port);
        }
        ctx(self.handle.link().add(b.build()).execute().await, || {
            format!("create vxlan device {}", s.name)
        })?;
        // Peers never send router advertisements over the overlay.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/accept_ra", s.name), "0");
        Ok(())
    }

    async fn delete_link(&self, index: u32) -> Result<(), NetError> {
        ctx(self.handle.link().del(index).execute().await, || {
            format!("delete link #{index}")
        })
    }

    async fn set_up(&self, index: u32) -> Result<(), NetError> {
        let m = LinkUnspec::new_with_index(index).up().build();
        ctx(self.handle.link().set(m).execute().await, || {
            format!("set link #{index} up")
        })
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError> {
        let m = LinkUnspec::new_with_index(index).mtu(mtu).build();
        ctx(self.handle.link().set(m).execute().await, || {
            format!("set link #{index} mtu {mtu}")
        })
    }

    async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetError> {
        let m = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .build();
        ctx(self.handle.link().set(m).execute().await, || {
            format!("set link #{index} address {mac}")
        })
    }

    async fn addrs(
        &self,
        index: Option<u32>,
        family: Family,
    ) -> Result<Vec<(u32, IpNet)>, NetError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let want = family_filter(family);
        let parsed = req.execute().try_filter_map(|m| {
            let entry = (m.header.family == want)
                .then(|| addr_of(&m))
                .flatten()
                .and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
                .map(|n| (m.header.index, n));
            futures::future::ready(Ok(entry))
        });
        ctx(parsed.try_collect().await, || "list addresses".into())
    }

    async fn add_addr(&self, index: u32, addr: IpNet) -> Result<(), NetError> {
        ctx(
            self.handle
                .address()
                .add(index, addr.addr(), addr.prefix_len())
                .replace()
                .execute()
                .await,
            || format!("add address {addr} to link #{index}"),
        )
    }

    async fn del_addr(&self, index: u32, addr: IpNet) -> Result<(), NetError> {
        let msgs: Vec<_> = ctx(
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await,
            || format!("list addresses of link #{index}"),
        )?;
        for m in msgs {
            if m.header.prefix_len == addr.prefix_len() && addr_of(&m) == Some(addr.addr()) {
                ctx(self.handle.address().del(m).execute().await, || {
                    format!("delete address {addr} from link #{index}")
                })?;
            }
        }
        Ok(())
    }

    async fn route_get_full(&self, dst: IpAddr) -> Result<RouteGet, NetError> {
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut s = self.handle.route().get(msg).execute();
        let r = match s.next().await {
            None => return Ok(None),
            Some(r) => ctx(r, || format!("route get {dst}"))?,
        };
        let src = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        });
        Ok(route_oif(&r).map(|i| (i, src, route_gw(&r))))
    }

    /// Parsed as the dump is read (`crate::dump`): a node with 20000 routes never holds 20000
    /// netlink messages at once.
    async fn main_routes(&self, family: Family) -> Result<Vec<RouteEntry>, NetError> {
        let filter = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        ctx(
            crate::dump::dump(RouteNetlinkMessage::GetRoute(filter), |m| {
                route_entry(m, family)
            })
            .await,
            || format!("list {family:?} routes"),
        )
    }

    async fn write_route(
        &self,
        dst: IpNet,
        gw: IpAddr,
        index: u32,
        onlink: bool,
        how: RouteWrite,
    ) -> Result<(), NetError> {
        let mut b = route_to(dst, Some(gw))?
            .output_interface(index)
            .scope(RouteScope::Universe)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if onlink {
            b = b.onlink();
        }
        let req = self.handle.route().add(b.build());
        let req = match how {
            RouteWrite::Replace => req.replace(),
            RouteWrite::Create => req,
        };
        ctx(req.execute().await, || {
            format!(
                "{} route {dst} via {gw} dev #{index}{}",
                if how == RouteWrite::Replace {
                    "replace"
                } else {
                    "add"
                },
                if onlink { " onlink" } else { "" }
            )
        })
    }

    async fn replace_dev_route(&self, dst: IpNet, index: u32) -> Result<(), NetError> {
        let m = route_to(dst, None)?
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        ctx(self.handle.route().add(m).replace().execute().await, || {
            format!("replace route {dst} dev #{index}")
        })
    }

    async fn del_route(&self, dst: IpNet, gw: IpAddr, index: u32) -> Result<(), NetError> {
        let m = route_to(dst, Some(gw))?
            .output_interface(index)
            // The builder defaults to `proto static`, and the kernel only deletes a route whose
            // protocol matches: unspec matches any, so routes left by upstream (proto boot) go too.
            .protocol(RouteProtocol::Unspec)
            .build();
        ctx(self.handle.route().del(m).execute().await, || {
            format!("delete route {dst} via {gw}")
        })
    }

    /// Parsed as the dump is read (`crate::dump`).
    async fn neighbours(
        &self,
        index: u32,
        family: Family,
    ) -> Result<BTreeMap<IpAddr, MacAddr>, NetError> {
        let mut req = NeighbourMessage::default();
        req.header.family = family_filter(family);
        let keep = |m| neighbour_entry(m, index, family);
        let found = crate::dump::dump(RouteNetlinkMessage::GetNeighbour(req), keep).await;
        ctx(found.map(BTreeMap::from_iter), || "list neighbours".into())
    }

    async fn set_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<(), NetError> {
        let req = self
            .handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .replace();
        ctx(req.execute().await, || {
            format!("set neighbour {ip} lladdr {mac} on #{index}")
        })
    }

    async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), NetError> {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = index;
        let (family, dst) = match ip {
            IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
        };
        m.header.family = family;
        m.attributes.push(NeighbourAttribute::Destination(dst));
        ctx(self.handle.neighbours().del(m).execute().await, || {
            format!("delete neighbour {ip} on #{index}")
        })
    }

    /// Parsed as the dump is read (`crate::dump`).
    async fn fdb(&self, index: u32) -> Result<BTreeMap<MacAddr, IpAddr>, NetError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let keep = |m| fdb_entry(m, index);
        let found = crate::dump::dump(RouteNetlinkMessage::GetNeighbour(req), keep).await;
        ctx(found.map(BTreeMap::from_iter), || "list FDB entries".into())
    }

    async fn set_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetError> {
        let req = self
            .handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .replace();
        ctx(req.execute().await, || {
            format!("set fdb {mac} dst {dst} on #{index}")
        })
    }

    async fn del_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<(), NetError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        let dst_attr = match dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        m.attributes.push(NeighbourAttribute::Destination(dst_attr));
        ctx(self.handle.neighbours().del(m).execute().await, || {
            format!("delete fdb {mac} dst {dst} on #{index}")
        })
    }
}

/// An address message's address: IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on
/// point-to-point links.
fn addr_of(m: &rtnetlink::packet_route::address::AddressMessage) -> Option<IpAddr> {
    m.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })
}

/// ENODEV: the kernel's answer for a link that does not exist.
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

/// The single link a filtered get returns; `None` when the kernel says there is no such link.
async fn one_link(req: rtnetlink::LinkGetRequest, what: String) -> Result<Option<Link>, NetError> {
    match req.execute().next().await {
        None => Ok(None),
        Some(Ok(m)) => Ok(Some(parse_link(&m))),
        Some(Err(rtnetlink::Error::NetlinkError(e))) if -e.raw_code() == ENODEV => Ok(None),
        Some(Err(e)) => Err(net_error(what, e)),
    }
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

pub(crate) fn route_dst(r: &RouteMessage) -> Option<IpNet> {
    let len = r.header.destination_prefix_length;
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Ipv4Net::new(*ip, len).ok().map(IpNet::V4)
        }
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
            ipnet::Ipv6Net::new(*ip, len).ok().map(IpNet::V6)
        }
        _ => None,
    })
}

fn route_gw(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

fn neigh_dst(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        // AF_BRIDGE (FDB) messages carry the VXLAN destination as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neigh_lladdr(m: &NeighbourMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => MacAddr::from_slice(b),
        _ => None,
    })
}

/// Is this the kind name of a VXLAN link?
pub fn is_vxlan(l: &Link) -> bool {
    l.kind.as_deref() == Some(&InfoKind::Vxlan.to_string())
}

/// A main-table route of `family` from a route dump, as we keep it.
pub fn route_entry(m: RouteNetlinkMessage, family: Family) -> Option<RouteEntry> {
    let RouteNetlinkMessage::NewRoute(r) = m else {
        return None;
    };
    let default = match family {
        Family::V4 => IpNet::V4(Ipv4Net::default()),
        Family::V6 => IpNet::V6(ipnet::Ipv6Net::default()),
    };
    // The dump asked for one family; a message of another (or a destination that does not
    // match its header) is not kept rather than taken for a route of ours.
    let main = route_table(&r) == u32::from(RT_TABLE_MAIN)
        && r.header.address_family == family_filter(family);
    route_dst(&r)
        .or_else(|| (r.header.destination_prefix_length == 0).then_some(default))
        .filter(|dst| main && Family::of(dst.addr()) == family)
        .map(|dst| RouteEntry {
            dst,
            gw: route_gw(&r),
            oif: route_oif(&r),
            protocol: u8::from(r.header.protocol),
            unicast: r.header.kind == RouteType::Unicast,
        })
}

/// A permanent neighbour of `family` on link `index` from a neighbour dump.
pub fn neighbour_entry(
    m: RouteNetlinkMessage,
    index: u32,
    family: Family,
) -> Option<(IpAddr, MacAddr)> {
    let RouteNetlinkMessage::NewNeighbour(m) = m else {
        return None;
    };
    let ours = m.header.ifindex == index && m.header.state == NeighbourState::Permanent;
    match (ours, neigh_dst(&m), neigh_lladdr(&m)) {
        (true, Some(ip), Some(mac)) if Family::of(ip) == family => Some((ip, mac)),
        _ => None,
    }
}

/// An FDB entry of link `index` from a bridge-family neighbour dump.
pub fn fdb_entry(m: RouteNetlinkMessage, index: u32) -> Option<(MacAddr, IpAddr)> {
    let RouteNetlinkMessage::NewNeighbour(m) = m else {
        return None;
    };
    match (m.header.ifindex == index, neigh_dst(&m), neigh_lladdr(&m)) {
        (true, Some(dst), Some(mac)) => Some((mac, dst)),
        _ => None,
    }
}

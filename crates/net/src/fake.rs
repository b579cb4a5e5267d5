//! An in-memory stand-in for the kernel behind [`NetOps`], for tests that run as any user: it
//! keeps links, addresses, main-table routes, neighbour and FDB entries as the kernel would
//! (EEXIST on an exclusive create, ENOENT/ESRCH on deleting what is not there, a deleted link
//! takes its entries with it), records every request in order, and fails requests on demand.
//! Tests change its state behind the backend's back to play drift and foreign writers.

use crate::ops::{
    Family, Link, NetError, NetOps, NetResult, RouteEntry, RouteGet, RouteWrite, VxlanInfo,
    VxlanSpec,
};
use flannel_core::iface::{IfaceAddr, IfaceLink, Snapshot};
use flannel_core::MacAddr;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

pub const ENOENT: i32 = 2;
pub const ESRCH: i32 = 3;
pub const EEXIST: i32 = 17;
pub const ENODEV: i32 = 19;
pub const ENOBUFS: i32 = 105;
pub const EOPNOTSUPP: i32 = 95;

/// One request, as the backend made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Links and addresses for the interface choice.
    Snapshot,
    DefaultRouteLink(Family),
    HasBlackhole(IpNet),
    AddBlackhole(IpNet),
    CreateWireguard(String),
    ListLinks,
    GetLink(String),
    GetLinkIndex(u32),
    CreateVxlan(String),
    DeleteLink(u32),
    SetUp(u32),
    SetMtu(u32, u32),
    SetMac(u32, MacAddr),
    ListAddrs(Option<u32>, Family),
    AddAddr(u32, IpNet),
    DelAddr(u32, IpNet),
    RouteGet(IpAddr),
    ListRoutes(Family),
    WriteRoute(IpNet, IpAddr, u32, RouteWrite),
    ReplaceDevRoute(IpNet, u32),
    DelRoute(IpNet, IpAddr, u32),
    ListNeighbours(u32, Family),
    SetNeighbour(u32, IpAddr, MacAddr),
    DelNeighbour(u32, IpAddr),
    ListFdb(u32),
    SetFdb(u32, MacAddr, IpAddr),
    DelFdb(u32, MacAddr, IpAddr),
}

impl Call {
    /// A dump: a read whose cost grows with the node's state.
    pub fn is_dump(&self) -> bool {
        matches!(
            self,
            Call::Snapshot
                | Call::DefaultRouteLink(_)
                | Call::HasBlackhole(_)
                | Call::ListLinks
                | Call::ListAddrs(None, _)
                | Call::ListRoutes(_)
                | Call::ListNeighbours(..)
                | Call::ListFdb(_)
        )
    }

    /// A request that changes the kernel.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Call::CreateVxlan(_)
                | Call::CreateWireguard(_)
                | Call::AddBlackhole(_)
                | Call::DeleteLink(_)
                | Call::SetUp(_)
                | Call::SetMtu(..)
                | Call::SetMac(..)
                | Call::AddAddr(..)
                | Call::DelAddr(..)
                | Call::WriteRoute(..)
                | Call::ReplaceDevRoute(..)
                | Call::DelRoute(..)
                | Call::SetNeighbour(..)
                | Call::DelNeighbour(..)
                | Call::SetFdb(..)
                | Call::DelFdb(..)
        )
    }
}

/// A main-table route with what the kernel keys it by beside its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRoute {
    pub entry: RouteEntry,
    pub metric: u32,
    pub onlink: bool,
}

type FailWhen = Box<dyn Fn(&Call) -> bool + Send>;

/// What the fake kernel holds. Tests read and change it through [`FakeNetlink::with`].
#[derive(Default)]
pub struct FakeState {
    pub links: BTreeMap<u32, Link>,
    pub addrs: Vec<(u32, IpNet)>,
    pub routes: Vec<FakeRoute>,
    /// Permanent neighbour entries: (link, IP) → MAC.
    pub neighbours: BTreeMap<(u32, IpAddr), MacAddr>,
    /// FDB entries: (link, MAC) → destination.
    pub fdb: BTreeMap<(u32, MacAddr), IpAddr>,
    /// Answers to `ip route get`; an address not here has no route.
    pub route_get: BTreeMap<IpAddr, RouteGet>,
    /// Every request so far, in order.
    pub calls: Vec<Call>,
    failures: Vec<(FailWhen, i32, usize)>,
}

impl FakeState {
    fn link_exists(&self, index: u32) -> NetResult<()> {
        if self.links.contains_key(&index) {
            Ok(())
        } else {
            Err(errno(format!("link #{index}"), ENODEV))
        }
    }

    fn link_mut(&mut self, index: u32) -> NetResult<&mut Link> {
        self.links
            .get_mut(&index)
            .ok_or_else(|| errno(format!("link #{index}"), ENODEV))
    }

    fn next_index(&self) -> u32 {
        self.links.keys().next_back().map_or(1, |i| i + 1)
    }

    /// Adds a plain link (a NIC, a bridge) and returns its index.
    pub fn add_link(&mut self, name: &str, mtu: u32) -> u32 {
        let index = self.next_index();
        self.links.insert(
            index,
            Link {
                index,
                name: name.into(),
                mtu,
                mac: Some(MacAddr([2, 0, 0, 0, 0, index as u8])),
                up: true,
                kind: None,
                vxlan: None,
            },
        );
        index
    }

    /// A route as another writer (the kernel for a connected network, an admin, upstream)
    /// leaves it.
    pub fn add_foreign_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32, protocol: u8) {
        self.routes.push(FakeRoute {
            entry: RouteEntry {
                dst,
                gw,
                oif: Some(oif),
                protocol,
                unicast: true,
            },
            metric: 0,
            onlink: false,
        });
    }

    /// The main-table routes through `oif`: destination → gateway.
    pub fn routes_on(&self, oif: u32) -> BTreeMap<IpNet, Option<IpAddr>> {
        self.routes
            .iter()
            .filter(|r| r.entry.oif == Some(oif))
            .map(|r| (r.entry.dst, r.entry.gw))
            .collect()
    }

    fn check_failure(&mut self, call: &Call) -> NetResult<()> {
        let hit = self.failures.iter().position(|(when, _, _)| when(call));
        if let Some(i) = hit {
            let code = self.failures[i].1;
            self.failures[i].2 -= 1;
            if self.failures[i].2 == 0 {
                drop(self.failures.remove(i));
            }
            return Err(errno(format!("{call:?} (injected)"), code));
        }
        Ok(())
    }
}

/// A kernel error with this errno.
pub fn errno(what: String, code: i32) -> NetError {
    NetError::kernel(what, code)
}

/// The fake kernel; clones share state, as clones of [`crate::Netlink`] share a socket.
#[derive(Clone, Default)]
pub struct FakeNetlink {
    state: Arc<Mutex<FakeState>>,
}

impl FakeNetlink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node as it is before flanneld starts: `lo` (index 1) and `eth0` (index 2, MTU 1500)
    /// holding `addr`, with the kernel's connected route for it.
    pub fn node(addr: IpNet) -> Self {
        let nl = Self::new();
        nl.with(|s| {
            s.add_link("lo", 65536);
            let eth0 = s.add_link("eth0", 1500);
            s.addrs.push((eth0, addr));
            s.add_foreign_route(addr.trunc(), None, eth0, 2);
        });
        nl
    }

    /// Adds a default route via `gw` through `eth0` (as the boot scripts leave it).
    pub fn with_default_route(self, gw: IpAddr) -> Self {
        self.with(|s| {
            let eth0 = s
                .links
                .values()
                .find(|l| l.name == "eth0")
                .map_or(0, |l| l.index);
            let any = match gw {
                IpAddr::V4(_) => IpNet::V4(Default::default()),
                IpAddr::V6(_) => IpNet::V6(Default::default()),
            };
            s.add_foreign_route(any, Some(gw), eth0, 4);
        });
        self
    }

    /// Reads or changes the fake kernel's state.
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.lock())
    }

    /// The requests made since the last call.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The next `times` requests for which `when` holds fail with `code`.
    pub fn fail(&self, when: impl Fn(&Call) -> bool + Send + 'static, code: i32, times: usize) {
        self.lock().failures.push((Box::new(when), code, times));
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has failed already; its state is still
        // worth reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `call`, fails it if asked to, else runs `f` on the state.
    fn run<T>(&self, call: Call, f: impl FnOnce(&mut FakeState) -> NetResult<T>) -> NetResult<T> {
        let mut s = self.lock();
        s.calls.push(call.clone());
        s.check_failure(&call)?;
        f(&mut s)
    }
}

impl NetOps for FakeNetlink {
    async fn iface_snapshot(&self) -> NetResult<Snapshot> {
        self.run(Call::Snapshot, |s| {
            Ok(Snapshot {
                links: s
                    .links
                    .values()
                    .map(|l| IfaceLink {
                        index: l.index,
                        name: l.name.clone(),
                        mtu: l.mtu,
                    })
                    .collect(),
                addrs: s
                    .addrs
                    .iter()
                    .map(|(index, a)| IfaceAddr {
                        index: *index,
                        ip: a.addr(),
                        permanent: true,
                        temporary: false,
                        deprecated: false,
                    })
                    .collect(),
            })
        })
    }

    async fn default_route_link(&self, family: Family) -> NetResult<Option<u32>> {
        self.run(Call::DefaultRouteLink(family), |s| {
            Ok(s.routes
                .iter()
                .find(|r| r.entry.dst.prefix_len() == 0 && Family::of_net(&r.entry.dst) == family)
                .and_then(|r| r.entry.oif))
        })
    }

    async fn has_blackhole(&self, dst: IpNet) -> NetResult<bool> {
        self.run(Call::HasBlackhole(dst), |s| {
            Ok(s.routes
                .iter()
                .any(|r| r.entry.dst == dst && is_blackhole(r)))
        })
    }

    async fn add_blackhole(&self, dst: IpNet) -> NetResult<()> {
        self.run(Call::AddBlackhole(dst), |s| {
            if !s
                .routes
                .iter()
                .any(|r| r.entry.dst == dst && is_blackhole(r))
            {
                s.routes.push(FakeRoute {
                    entry: RouteEntry {
                        dst,
                        gw: None,
                        oif: None,
                        protocol: crate::ROUTE_PROTOCOL,
                        unicast: false,
                    },
                    metric: crate::netlink::BLACKHOLE_METRIC,
                    onlink: false,
                });
            }
            Ok(())
        })
    }

    /// A link of kind `wireguard`; inject EOPNOTSUPP to play a kernel without the module.
    async fn create_wireguard(&self, name: &str) -> NetResult<()> {
        self.run(Call::CreateWireguard(name.into()), |s| {
            if s.links.values().any(|l| l.name == name) {
                return Err(errno(format!("create wireguard device {name}"), EEXIST));
            }
            let index = s.next_index();
            s.links.insert(
                index,
                Link {
                    index,
                    name: name.into(),
                    mtu: 1420,
                    mac: None,
                    up: false,
                    kind: Some("wireguard".into()),
                    vxlan: None,
                },
            );
            Ok(())
        })
    }

    async fn links(&self) -> NetResult<Vec<Link>> {
        self.run(Call::ListLinks, |s| Ok(s.links.values().cloned().collect()))
    }

    async fn link_by_name(&self, name: &str) -> NetResult<Option<Link>> {
        self.run(Call::GetLink(name.into()), |s| {
            Ok(s.links.values().find(|l| l.name == name).cloned())
        })
    }

    async fn link_by_index(&self, index: u32) -> NetResult<Option<Link>> {
        self.run(Call::GetLinkIndex(index), |s| {
            Ok(s.links.get(&index).cloned())
        })
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> NetResult<()> {
        self.run(Call::CreateVxlan(spec.name.clone()), |s| {
            if s.links.values().any(|l| l.name == spec.name) {
                return Err(errno(format!("create {}", spec.name), EEXIST));
            }
            let index = s.next_index();
            s.links.insert(
                index,
                Link {
                    index,
                    name: spec.name.clone(),
                    mtu: spec.mtu,
                    mac: Some(spec.mac),
                    up: false,
                    kind: Some("vxlan".into()),
                    vxlan: Some(VxlanInfo {
                        vni: Some(spec.vni),
                        local: Some(spec.local),
                        dev: Some(spec.dev),
                        port: Some(if spec.port == 0 { 8472 } else { spec.port }),
                        learning: Some(spec.learning),
                    }),
                },
            );
            Ok(())
        })
    }

    async fn delete_link(&self, index: u32) -> NetResult<()> {
        self.run(Call::DeleteLink(index), |s| {
            s.links
                .remove(&index)
                .ok_or_else(|| errno(format!("delete link #{index}"), ENODEV))?;
            s.addrs.retain(|(i, _)| *i != index);
            s.routes.retain(|r| r.entry.oif != Some(index));
            s.neighbours.retain(|(i, _), _| *i != index);
            s.fdb.retain(|(i, _), _| *i != index);
            Ok(())
        })
    }

    async fn set_up(&self, index: u32) -> NetResult<()> {
        self.run(Call::SetUp(index), |s| {
            s.link_mut(index)?.up = true;
            Ok(())
        })
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> NetResult<()> {
        self.run(Call::SetMtu(index, mtu), |s| {
            s.link_mut(index)?.mtu = mtu;
            Ok(())
        })
    }

    async fn set_mac(&self, index: u32, mac: MacAddr) -> NetResult<()> {
        self.run(Call::SetMac(index, mac), |s| {
            s.link_mut(index)?.mac = Some(mac);
            Ok(())
        })
    }

    async fn addrs(&self, index: Option<u32>, family: Family) -> NetResult<Vec<(u32, IpNet)>> {
        self.run(Call::ListAddrs(index, family), |s| {
            Ok(s.addrs
                .iter()
                .filter(|(i, a)| index.is_none_or(|x| x == *i) && Family::of_net(a) == family)
                .copied()
                .collect())
        })
    }

    async fn add_addr(&self, index: u32, addr: IpNet) -> NetResult<()> {
        self.run(Call::AddAddr(index, addr), |s| {
            s.link_exists(index)?;
            if !s.addrs.contains(&(index, addr)) {
                s.addrs.push((index, addr));
            }
            Ok(())
        })
    }

    async fn del_addr(&self, index: u32, addr: IpNet) -> NetResult<()> {
        self.run(Call::DelAddr(index, addr), |s| {
            s.addrs.retain(|x| *x != (index, addr));
            Ok(())
        })
    }

    async fn route_get_full(&self, dst: IpAddr) -> NetResult<RouteGet> {
        self.run(Call::RouteGet(dst), |s| {
            Ok(s.route_get.get(&dst).copied().flatten())
        })
    }

    async fn main_routes(&self, family: Family) -> NetResult<Vec<RouteEntry>> {
        self.run(Call::ListRoutes(family), |s| {
            Ok(s.routes
                .iter()
                .filter(|r| Family::of_net(&r.entry.dst) == family)
                .map(|r| r.entry.clone())
                .collect())
        })
    }

    async fn write_route(
        &self,
        dst: IpNet,
        gw: IpAddr,
        index: u32,
        onlink: bool,
        how: RouteWrite,
    ) -> NetResult<()> {
        self.run(Call::WriteRoute(dst, gw, index, how), |s| {
            s.link_exists(index)?;
            upsert_route(s, dst, Some(gw), index, onlink, how)
        })
    }

    async fn replace_dev_route(&self, dst: IpNet, index: u32) -> NetResult<()> {
        self.run(Call::ReplaceDevRoute(dst, index), |s| {
            s.link_exists(index)?;
            upsert_route(s, dst, None, index, false, RouteWrite::Replace)
        })
    }

    async fn del_route(&self, dst: IpNet, gw: IpAddr, index: u32) -> NetResult<()> {
        self.run(Call::DelRoute(dst, gw, index), |s| {
            let at = s.routes.iter().position(|r| {
                r.entry.dst == dst && r.entry.gw == Some(gw) && r.entry.oif == Some(index)
            });
            match at {
                Some(i) => {
                    s.routes.remove(i);
                    Ok(())
                }
                None => Err(errno(format!("delete route {dst}"), ESRCH)),
            }
        })
    }

    async fn neighbours(&self, index: u32, family: Family) -> NetResult<BTreeMap<IpAddr, MacAddr>> {
        self.run(Call::ListNeighbours(index, family), |s| {
            Ok(s.neighbours
                .iter()
                .filter(|((i, ip), _)| *i == index && Family::of(*ip) == family)
                .map(|((_, ip), mac)| (*ip, *mac))
                .collect())
        })
    }

    async fn set_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> NetResult<()> {
        self.run(Call::SetNeighbour(index, ip, mac), |s| {
            s.link_exists(index)?;
            s.neighbours.insert((index, ip), mac);
            Ok(())
        })
    }

    async fn del_neighbour(&self, index: u32, ip: IpAddr) -> NetResult<()> {
        self.run(Call::DelNeighbour(index, ip), |s| {
            s.neighbours
                .remove(&(index, ip))
                .map(|_| ())
                .ok_or_else(|| errno(format!("delete neighbour {ip}"), ENOENT))
        })
    }

    async fn fdb(&self, index: u32) -> NetResult<BTreeMap<MacAddr, IpAddr>> {
        self.run(Call::ListFdb(index), |s| {
            Ok(s.fdb
                .iter()
                .filter(|((i, _), _)| *i == index)
                .map(|((_, mac), dst)| (*mac, *dst))
                .collect())
        })
    }

    async fn set_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> NetResult<()> {
        self.run(Call::SetFdb(index, mac, dst), |s| {
            s.link_exists(index)?;
            s.fdb.insert((index, mac), dst);
            Ok(())
        })
    }

    async fn del_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> NetResult<()> {
        self.run(Call::DelFdb(index, mac, dst), |s| {
            if s.fdb.get(&(index, mac)) == Some(&dst) {
                s.fdb.remove(&(index, mac));
                Ok(())
            } else {
                Err(errno(format!("delete fdb {mac}"), ENOENT))
            }
        })
    }
}

/// The kernel's `RTM_NEWROUTE` for the main table at metric 0: a create fails where a route
/// for the destination exists, a replace overwrites it.
fn upsert_route(
    s: &mut FakeState,
    dst: IpNet,
    gw: Option<IpAddr>,
    index: u32,
    onlink: bool,
    how: RouteWrite,
) -> NetResult<()> {
    let route = FakeRoute {
        entry: RouteEntry {
            dst,
            gw,
            oif: Some(index),
            protocol: crate::ROUTE_PROTOCOL,
            unicast: true,
        },
        metric: 0,
        onlink,
    };
    match s
        .routes
        .iter()
        .position(|r| r.entry.dst == dst && r.metric == 0)
    {
        Some(_) if how == RouteWrite::Create => Err(errno(format!("add route {dst}"), EEXIST)),
        Some(i) => {
            s.routes[i] = route;
            Ok(())
        }
        None => {
            s.routes.push(route);
            Ok(())
        }
    }
}

/// The fake keeps blackhole routes as non-unicast routes without a link.
fn is_blackhole(r: &FakeRoute) -> bool {
    !r.entry.unicast && r.entry.oif.is_none()
}

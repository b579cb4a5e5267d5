//! The kernel operations the backends use, as a trait: [`crate::Netlink`] talks to the kernel,
//! [`crate::fake::FakeNetlink`] keeps the same state in memory and records every request, so
//! reconcile logic is tested as any user. Backends are generic over it (static dispatch).
//!
//! Every address type is family-generic (`IpNet`/`IpAddr`): one code path for IPv4 and IPv6.

use flannel_core::iface::Snapshot;
use flannel_core::MacAddr;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

pub use flannel_core::Family;

/// A kernel request that failed: what was asked, and the kernel's errno when the kernel
/// refused it (so callers and the fake share one error without forged netlink messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("netlink: {op}: {message}")]
pub struct NetError {
    /// The request, as a reader would write it ("add route 10.244.1.0/24 via ...").
    pub op: String,
    /// The kernel's errno, when the kernel refused the request.
    pub code: Option<i32>,
    /// The kernel's or the library's words for the failure.
    pub message: String,
}

impl NetError {
    /// The kernel refused `op` with `errno`.
    pub fn kernel(op: String, errno: i32) -> Self {
        Self {
            op,
            code: Some(errno),
            message: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// `op` failed before or beside the kernel (a socket, a message that would not build).
    pub fn other(op: String, message: String) -> Self {
        Self {
            op,
            code: None,
            message,
        }
    }

    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        self.code
    }
}

/// What flannel needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    pub kind: Option<String>,
    pub vxlan: Option<VxlanInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub dev: Option<u32>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
}

/// A VXLAN device as flannel creates it (upstream `vxlan/device.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// The VTEP's own address: IPv4 for `flannel.<VNI>`, IPv6 for `flannel-v6.<VNI>`.
    pub local: IpAddr,
    pub dev: u32,
    /// 0 = kernel default (8472 on Linux).
    pub port: u16,
    pub mtu: u32,
    pub mac: MacAddr,
    pub learning: bool,
}

/// A main-table route as flannel needs to see it: where to, how, and whose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    /// The route protocol: [`crate::ROUTE_PROTOCOL`] marks ours.
    pub protocol: u8,
    /// A plain unicast route (not blackhole, unreachable, prohibit, ...).
    pub unicast: bool,
}

impl RouteEntry {
    pub fn ours(&self) -> bool {
        self.protocol == crate::ROUTE_PROTOCOL
    }
}

/// Routes with a gateway through link `index`: destination → gateway; only ours (`proto
/// 252`) when `only_ours`.
pub fn gw_routes_on(routes: &[RouteEntry], index: u32, only_ours: bool) -> BTreeMap<IpNet, IpAddr> {
    routes
        .iter()
        .filter(|r| r.oif == Some(index) && (!only_ours || r.ours()))
        .filter_map(|r| Some((r.dst, r.gw?)))
        .collect()
}

/// How a route is written: over an existing one we own, or created only where none exists (the
/// kernel answers EEXIST instead of replacing a route that is not ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteWrite {
    Replace,
    Create,
}

/// Result of a kernel operation.
pub type NetResult<T> = Result<T, NetError>;

/// `ip route get <dst>`: output link, preferred source, and gateway (`None` when `dst` is
/// directly connected).
pub type RouteGet = Option<(u32, Option<IpAddr>, Option<IpAddr>)>;

/// What the backends ask of the kernel. Reads are dumps (their cost grows with the node's
/// state); writes touch one entry each and are idempotent where the kernel allows it.
pub trait NetOps: Clone + Send + Sync + 'static {
    /// Links and addresses (both families, with flags) for choosing the external interface.
    fn iface_snapshot(&self) -> impl Future<Output = NetResult<Snapshot>> + Send;
    /// The link of the first main-table default route of `family`, as upstream picks the
    /// external interface.
    fn default_route_link(
        &self,
        family: Family,
    ) -> impl Future<Output = NetResult<Option<u32>>> + Send;

    /// Every link (`ip link show`).
    fn links(&self) -> impl Future<Output = NetResult<Vec<Link>>> + Send;
    fn link_by_name(&self, name: &str) -> impl Future<Output = NetResult<Option<Link>>> + Send;
    fn link_by_index(&self, index: u32) -> impl Future<Output = NetResult<Option<Link>>> + Send;
    /// Creates a VXLAN device (and turns off router advertisements on it: peers never send any).
    fn create_vxlan(&self, spec: &VxlanSpec) -> impl Future<Output = NetResult<()>> + Send;
    /// Creates a kernel WireGuard device `name`: fails with EOPNOTSUPP where the kernel has no
    /// WireGuard module (as on these lab machines).
    fn create_wireguard(&self, name: &str) -> impl Future<Output = NetResult<()>> + Send;
    fn delete_link(&self, index: u32) -> impl Future<Output = NetResult<()>> + Send;
    fn set_up(&self, index: u32) -> impl Future<Output = NetResult<()>> + Send;
    fn set_mtu(&self, index: u32, mtu: u32) -> impl Future<Output = NetResult<()>> + Send;
    fn set_mac(&self, index: u32, mac: MacAddr) -> impl Future<Output = NetResult<()>> + Send;

    /// Addresses of one family with their link index; all links when `index` is `None`.
    fn addrs(
        &self,
        index: Option<u32>,
        family: Family,
    ) -> impl Future<Output = NetResult<Vec<(u32, IpNet)>>> + Send;
    fn add_addr(&self, index: u32, addr: IpNet) -> impl Future<Output = NetResult<()>> + Send;
    /// Removes `addr` from the link if it is there.
    fn del_addr(&self, index: u32, addr: IpNet) -> impl Future<Output = NetResult<()>> + Send;

    fn route_get_full(&self, dst: IpAddr) -> impl Future<Output = NetResult<RouteGet>> + Send;
    /// `ip route get <dst>`: the output link and preferred source address.
    fn route_get(
        &self,
        dst: IpAddr,
    ) -> impl Future<Output = NetResult<Option<(u32, Option<IpAddr>)>>> + Send {
        async move { Ok(self.route_get_full(dst).await?.map(|(i, src, _)| (i, src))) }
    }
    /// Whether a blackhole route for exactly `dst` exists in the main table.
    fn has_blackhole(&self, dst: IpNet) -> impl Future<Output = NetResult<bool>> + Send;
    /// `ip route add blackhole <dst> proto 252 metric 4096`: a fallback behind the pod bridge's
    /// connected route for the same subnet (metric 0). Never a replace: the bridge's route must
    /// stay, and a blackhole in front of it (upstream's metric 0, when flanneld was there before
    /// the first pod) would make every pod of the node unreachable. Already there = done.
    fn add_blackhole(&self, dst: IpNet) -> impl Future<Output = NetResult<()>> + Send;
    /// Every main-table route of one family.
    fn main_routes(
        &self,
        family: Family,
    ) -> impl Future<Output = NetResult<Vec<RouteEntry>>> + Send;
    /// `ip route replace|add <dst> via <gw> dev <index> [onlink] proto 252`.
    fn write_route(
        &self,
        dst: IpNet,
        gw: IpAddr,
        index: u32,
        onlink: bool,
        how: RouteWrite,
    ) -> impl Future<Output = NetResult<()>> + Send;
    /// `ip route replace <dst> dev <index> proto 252`.
    fn replace_dev_route(
        &self,
        dst: IpNet,
        index: u32,
    ) -> impl Future<Output = NetResult<()>> + Send;
    /// Deletes the route to `dst` via `gw` on `index`, whatever its protocol.
    fn del_route(
        &self,
        dst: IpNet,
        gw: IpAddr,
        index: u32,
    ) -> impl Future<Output = NetResult<()>> + Send;

    /// Permanent neighbour entries of one family on link `index`: IP → MAC.
    fn neighbours(
        &self,
        index: u32,
        family: Family,
    ) -> impl Future<Output = NetResult<BTreeMap<IpAddr, MacAddr>>> + Send;
    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    fn set_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> impl Future<Output = NetResult<()>> + Send;
    fn del_neighbour(&self, index: u32, ip: IpAddr) -> impl Future<Output = NetResult<()>> + Send;

    /// FDB entries with an IP destination on link `index` (`bridge fdb show dev X`): MAC → dst.
    fn fdb(&self, index: u32) -> impl Future<Output = NetResult<BTreeMap<MacAddr, IpAddr>>> + Send;
    /// `bridge fdb replace <mac> dev <index> dst <dst> self permanent`.
    fn set_fdb(
        &self,
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    ) -> impl Future<Output = NetResult<()>> + Send;
    fn del_fdb(
        &self,
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    ) -> impl Future<Output = NetResult<()>> + Send;
}

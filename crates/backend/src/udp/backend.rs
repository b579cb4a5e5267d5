//! The udp backend itself: the TUN device `flannel0` (address, MTU, route to the network), the
//! worker threads, and the peer table they use.

use super::config::UdpConfig;
use super::table::PeerTable;
use super::worker::{Ctl, UdpEncap, Worker};
use crate::datapath::counters::{Counters, DropReport};
use crate::datapath::sock::Sock;
use crate::datapath::tun;
use crate::peers::usable_peers;
use crate::{Backend, BackendError, ExternalInterface, ReconcileReport};
use flannel_core::{Lease, LeaseAttrs};
use flannel_net::{Family, NetOps, Netlink};
use ipnet::{IpNet, Ipv4Net};
use std::net::SocketAddrV4;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use tracing::{info, warn};

pub const DEVICE: &str = "flannel0";
pub use super::config::DEFAULT_PORT;
/// IPv4 (20) + UDP (8) around every packet.
pub const OVERHEAD: u32 = 28;

pub struct UdpBackend<N: NetOps = Netlink> {
    nl: N,
    ext: ExternalInterface,
    network: Ipv4Net,
    port: u16,
    mtu: u32,
    index: u32,
    workers: Vec<(Sender<Ctl>, JoinHandle<()>)>,
    table: Arc<PeerTable>,
    local: Option<Ipv4Net>,
    /// The guard of the last full pass, for lease deltas (see the vxlan backend's mirror);
    /// `None` until a full pass succeeds.
    guard: Option<crate::route_guard::RouteGuard>,
    counters: Arc<Counters>,
    /// The drops said so far.
    drops: DropReport,
}

impl<N: NetOps> UdpBackend<N> {
    pub async fn register(
        nl: N,
        ext: ExternalInterface,
        network: Ipv4Net,
        cfg: UdpConfig,
    ) -> Result<Self, BackendError> {
        let port = cfg.port;
        let queues = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let (fds, off) = tun::open(DEVICE, queues)
            .map_err(|e| BackendError::Device(format!("opening TUN device {DEVICE}: {e}")))?;
        let mtu = ext.mtu.saturating_sub(OVERHEAD);
        let link = nl.link_by_name(DEVICE).await?.ok_or_else(|| {
            BackendError::Device(format!("{DEVICE} vanished right after it was created"))
        })?;
        nl.set_mtu(link.index, mtu).await?;
        nl.set_up(link.index).await?;
        // Our ICMP errors come from the device's own address; without accept_local the kernel
        // would drop them as martians.
        if let Err(e) = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{DEVICE}/accept_local"),
            "1",
        ) {
            warn!(error = %e, "cannot set accept_local on {DEVICE}: ICMP unreachable errors will not reach pods");
        }
        let counters = Arc::new(Counters::default());
        let mut workers = Vec::new();
        let mut gro = false;
        let mut gso = false;
        for tun in fds {
            // Upstream binds the interface address, not the public one.
            let sock = Sock::bind(SocketAddrV4::new(ext.iface_addr, port).into()).map_err(|e| {
                BackendError::Device(format!("binding UDP {}:{port}: {e}", ext.iface_addr))
            })?;
            gro = sock.gro;
            gso = sock.gso();
            let (tx, rx) = channel();
            let w = Worker {
                tun,
                sock,
                ctl: rx,
                counters: counters.clone(),
                wake: None,
                encap: UdpEncap::default(),
            };
            let handle = std::thread::Builder::new()
                .name("flannel-udp".into())
                .spawn(move || w.run())
                .map_err(|e| BackendError::Device(format!("starting a udp worker: {e}")))?;
            workers.push((tx, handle));
        }
        info!(
            device = DEVICE,
            mtu,
            port,
            workers = workers.len(),
            tso = off.tso,
            uso = off.uso,
            udp_gro = gro,
            udp_gso = gso,
            "udp backend ready"
        );
        Ok(Self {
            nl,
            ext,
            network,
            port,
            mtu,
            index: link.index,
            workers,
            table: Arc::new(PeerTable::default()),
            local: None,
            guard: None,
            counters,
            drops: DropReport::default(),
        })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Hands `table` to the workers if it differs from theirs; whether it did.
    /// The incremental path (see `Backend::apply_delta`): the touched subnets' entries of the
    /// peer table replaced, no kernel read, no rebuild from every lease.
    fn delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Option<ReconcileReport> {
        let guard = self.guard.as_ref()?;
        if self.local != Some(own.subnet) {
            return None;
        }
        let touched: Vec<Ipv4Net> =
            crate::routes::touched_subnets(Family::V4, IpNet::V4(own.subnet), changed, removed)
                .into_iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(n),
                    IpNet::V6(_) => None,
                })
                .collect();
        let (peers, skipped) = usable_peers(own.subnet, changed, &["", "udp"], guard);
        let table = self.table.updated(
            &touched,
            peers.iter().map(|l| (l.subnet, l.attrs.public_ip)),
        );
        let changed = self.install(table, own.subnet);
        Some(ReconcileReport {
            added: usize::from(changed),
            skipped,
            ..Default::default()
        })
    }

    fn install(&mut self, table: PeerTable, own: Ipv4Net) -> bool {
        if *self.table == table && self.local == Some(own) {
            return false;
        }
        let table = Arc::new(table);
        for (tx, _) in &self.workers {
            let _ = tx.send(Ctl::Table(table.clone()));
        }
        info!(peers = table.len(), "udp peer table updated");
        self.table = table;
        self.local = Some(own);
        true
    }

    /// Logs each drop reason whose count grew since it was last said (on every full pass and
    /// every `--iptables-resync` tick).
    fn report_drops(&mut self) {
        let c = &self.counters;
        self.drops.report(&[
            (
                &c.rx_unknown_peer,
                "dropped udp datagrams from senders that are not peers",
            ),
            (
                &c.rx_not_for_us,
                "dropped inner packets not for this node's subnet (they would be relayed off the network)",
            ),
            (
                &c.rx_spoofed_source,
                "dropped inner packets with a source in another node's subnet (spoofed)",
            ),
        ]);
    }
}

impl<N: NetOps> Backend for UdpBackend<N> {
    fn datapath_counters(&self) -> Option<crate::DatapathCounters> {
        Some(crate::DatapathCounters::Udp(self.counters.clone()))
    }

    fn tick(&mut self) {
        self.report_drops();
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        // Upstream's udp backend publishes no BackendType and no BackendData.
        LeaseAttrs::v4(self.ext.ext_addr, "", None)
    }

    /// See `Backend::expected`: one route sends the whole network into `flannel0`; the
    /// workers pick the peer (no per-peer kernel entries).
    fn expected(&self, _own: &Lease, _leases: &[Lease]) -> Vec<flannel_core::state::KernelEntry> {
        vec![flannel_core::state::KernelEntry::Route {
            dst: IpNet::V4(self.network),
            gw: None,
            dev: DEVICE.into(),
        }]
    }

    fn devices(&self) -> Vec<String> {
        vec![DEVICE.into()]
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let mut report = ReconcileReport::default();
        // After a full pass, what it set up is ours: writing it again is a repair.
        let configured = self.guard.is_some();
        // The device: our address as /32, nothing else of the network, MTU, up.
        let want = IpNet::V4(Ipv4Net::new(own.subnet.network(), 32).unwrap_or_default());
        let addrs = self.nl.addrs(Some(self.index), Family::V4).await?;
        let in_network = |a: &IpNet| matches!(a, IpNet::V4(n) if self.network.contains(&n.addr()));
        for (_, a) in addrs.iter().filter(|(_, a)| *a != want && in_network(a)) {
            self.nl.del_addr(self.index, *a).await?;
            report.removed += 1;
        }
        if !addrs.iter().any(|(_, a)| *a == want) {
            self.nl.add_addr(self.index, want).await?;
            report.added += 1;
            report.repairs.address += usize::from(configured);
        }
        crate::datapath::device::keep_mtu_and_up(
            &self.nl,
            self.index,
            self.mtu,
            configured,
            &mut report,
        )
        .await?;
        // One route sends the whole network into the device; the workers pick the peer.
        let network = IpNet::V4(self.network);
        let has_route = |t: &[flannel_net::RouteEntry]| {
            t.iter().any(|r| {
                r.dst == network && r.oif == Some(self.index) && r.gw.is_none() && r.unicast
            })
        };
        let mut table = self.nl.main_routes(Family::V4).await?;
        if !has_route(&table) {
            self.nl.replace_dev_route(network, self.index).await?;
            report.added += 1;
            report.repairs.route += usize::from(configured);
            table = self.nl.main_routes(Family::V4).await?;
        }
        // Upstream's udp leases carry no BackendType; accept "udp" too.
        let guard = crate::guard::read(
            &self.nl,
            &table,
            IpNet::V4(self.network),
            &[self.index],
            self.ext.index,
            &Default::default(),
        )
        .await?;
        let (peers, skipped) = usable_peers(own.subnet, leases, &["", "udp"], &guard);
        report.skipped = skipped;
        let table = PeerTable::new(
            peers.iter().map(|l| (l.subnet, l.attrs.public_ip)),
            self.port,
            own.subnet,
            self.network,
        );
        if self.install(table, own.subnet) {
            report.added += 1;
        }
        self.guard = Some(guard);
        self.report_drops();
        Ok(report)
    }

    /// The incremental path (see `Backend::apply_delta`): the touched subnets' entries of the
    /// peer table replaced, no kernel read, no rebuild from every lease.
    async fn apply_delta(
        &mut self,
        own: &Lease,
        changed: &[Lease],
        removed: &[Lease],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        Ok(self.delta(own, changed, removed))
    }
}

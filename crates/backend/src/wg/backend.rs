//! The wireguard backend itself: the private key, the devices (`flannel-wg`, and
//! `flannel-wg-v6` in `separate` mode) as TUN devices served by our workers, their address,
//! MTU and route to the network, and the peer tables built from the leases. Reconciled like
//! every backend: a device someone deleted is created again, a changed peer set is handed to
//! the workers whole.

use super::key;
use super::table::{PeerState, WgTable};
use super::worker::{Ctl, Identity, WgEncap, Worker};
use crate::datapath::counters::{Counters, DropReport};
use crate::datapath::sock::Sock;
use crate::datapath::tun;
use crate::datapath::wake::Waker;
use crate::wg::config::{
    desired_peers, encode_key, Device, Key, Mode, PeerInputs, WgConfig, WgData, WgPeer, DEVICE,
    DEVICE_V6,
};
use crate::{Backend, BackendError, ExternalInterface, ReconcileReport};
use flannel_core::state::KernelEntry;
use flannel_core::{Lease, LeaseAttrs};
use flannel_net::{Family, NetOps, Netlink};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use tracing::{info, warn};

/// One of our devices and the workers that serve it.
struct WgDevice {
    kind: Device,
    name: &'static str,
    port: u16,
    index: u32,
    workers: Vec<(Sender<Ctl>, Arc<Waker>, JoinHandle<()>)>,
    table: Arc<WgTable>,
    /// The peers the table was built from (or the kernel device was given).
    peers: Vec<WgPeer>,
    /// A kernel WireGuard device (no workers, no table: the kernel holds the peers).
    kernel: bool,
}

impl WgDevice {
    fn stop(&mut self) {
        for (tx, wake, _) in &self.workers {
            let _ = tx.send(Ctl::Stop);
            wake.wake();
        }
        for (_, _, h) in self.workers.drain(..) {
            let _ = h.join();
        }
    }

    /// The networks routed into this device.
    fn networks(&self, v4: Option<Ipv4Net>, v6: Option<Ipv6Net>, mode: Mode) -> Vec<IpNet> {
        match (self.kind, mode) {
            (Device::V6, _) => v6.map(IpNet::V6).into_iter().collect(),
            (Device::Main, Mode::Separate) => v4.map(IpNet::V4).into_iter().collect(),
            (Device::Main, _) => v4
                .map(IpNet::V4)
                .into_iter()
                .chain(v6.map(IpNet::V6))
                .collect(),
        }
    }
}

pub struct WireguardBackend<N: NetOps = Netlink> {
    nl: N,
    ext: ExternalInterface,
    cfg: WgConfig,
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
    public: Key,
    private: Key,
    id: Arc<Identity>,
    /// The generic netlink socket of kernel WireGuard, once a kernel device exists.
    kernel: Option<super::kernel::KernelWg>,
    devices: Vec<WgDevice>,
    counters: Arc<Counters>,
    next_index: u32,
    mtu: u32,
    /// A full pass has succeeded: writing what it set up again is a repair.
    configured: bool,
    /// Drop counters as last logged.
    drops: DropReport,
}

impl<N: NetOps> WireguardBackend<N> {
    pub async fn register(
        nl: N,
        ext: ExternalInterface,
        v4: Option<Ipv4Net>,
        v6: Option<Ipv6Net>,
        cfg: WgConfig,
    ) -> Result<Self, BackendError> {
        let path = key::key_path();
        let (private, created) = key::load_or_create(&path).map_err(BackendError::Device)?;
        let id = Arc::new(Identity::new(private));
        let public = id.public;
        info!(
            key_file = %path.display(),
            public_key = %encode_key(public.as_bytes()),
            created,
            "WireGuard key"
        );
        let mut me = Self {
            nl,
            mtu: cfg.device_mtu(ext.mtu),
            ext,
            v4,
            v6,
            public: public.to_bytes(),
            private,
            id,
            kernel: None,
            devices: Vec::new(),
            counters: Arc::new(Counters::default()),
            next_index: 0,
            configured: false,
            drops: DropReport::default(),
            cfg,
        };
        let mut plan = Vec::new();
        match me.cfg.mode {
            Mode::Separate => {
                if v4.is_some() {
                    plan.push((Device::Main, DEVICE, me.cfg.listen_port));
                }
                if v6.is_some() {
                    plan.push((Device::V6, DEVICE_V6, me.cfg.listen_port_v6));
                }
            }
            _ => plan.push((Device::Main, DEVICE, me.cfg.listen_port)),
        }
        for (kind, name, port) in plan {
            let d = me.open_device(kind, name, port).await?;
            me.devices.push(d);
        }
        Ok(me)
    }

    /// Creates device `name` (replacing whatever has that name, as upstream does), its
    /// sockets and workers.
    async fn open_device(
        &mut self,
        kind: Device,
        name: &'static str,
        port: u16,
    ) -> Result<WgDevice, BackendError> {
        if let Some(old) = self.nl.link_by_name(name).await? {
            warn!(device = name, "deleting an existing {name} to create ours");
            self.nl.delete_link(old.index).await?;
        }
        if let Some(d) = self.open_kernel_device(kind, name, port).await? {
            return Ok(d);
        }
        let queues = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let (fds, off) = tun::open_with(name, queues, false)
            .map_err(|e| BackendError::Device(format!("opening TUN device {name}: {e}")))?;
        let link = self.nl.link_by_name(name).await?.ok_or_else(|| {
            BackendError::Device(format!("{name} vanished right after it was created"))
        })?;
        self.nl.set_mtu(link.index, self.mtu).await?;
        self.nl.set_up(link.index).await?;
        let mut workers = Vec::new();
        let mut gro = false;
        let (handshakes, queued) = super::handshakes::queue();
        let mut answer_from: Option<Sock> = None;
        for (i, tun) in fds.into_iter().enumerate() {
            // Kernel WireGuard listens on every address, both families.
            let sock = Sock::bind_dual(port)
                .or_else(|_| Sock::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
                .map_err(|e| {
                    BackendError::Device(format!("binding UDP port {port} for {name}: {e}"))
                })?;
            gro = sock.gro;
            if answer_from.is_none() {
                answer_from = Some(sock.try_clone().map_err(|e| {
                    BackendError::Device(format!("duplicating the socket of {name}: {e}"))
                })?);
            }
            let (tx, rx) = channel();
            let wake =
                Arc::new(Waker::new().map_err(|e| BackendError::Device(format!("eventfd: {e}")))?);
            let w = Worker {
                wake: Some(wake.clone()),
                tun,
                sock,
                ctl: rx,
                counters: self.counters.clone(),
                encap: WgEncap::new(
                    self.id.clone(),
                    i == 0,
                    self.mtu as usize,
                    handshakes.clone(),
                ),
            };
            let handle = std::thread::Builder::new()
                .name("flannel-wg".into())
                .spawn(move || w.run())
                .map_err(|e| BackendError::Device(format!("starting a wireguard worker: {e}")))?;
            workers.push((tx, wake, handle));
        }
        let queues = workers.len();
        if let Some(sock) = answer_from {
            let (tx, rx) = channel();
            let wake =
                Arc::new(Waker::new().map_err(|e| BackendError::Device(format!("eventfd: {e}")))?);
            let h = super::handshakes::Handshaker {
                queue: queued,
                ctl: rx,
                sock,
                counters: self.counters.clone(),
                id: self.id.clone(),
            };
            let handle = std::thread::Builder::new()
                .name("flannel-wg-hs".into())
                .spawn(move || h.run())
                .map_err(|e| BackendError::Device(format!("starting the handshake thread: {e}")))?;
            // First in the list: it learns of a new peer before any worker greets it, so the
            // peer's response finds it.
            workers.insert(0, (tx, wake, handle));
        }
        info!(
            device = name,
            mtu = self.mtu,
            port,
            workers = queues,
            tso = off.tso,
            udp_gro = gro,
            mode = self.cfg.mode.as_str(),
            "wireguard device ready (userspace)"
        );
        Ok(WgDevice {
            kind,
            name,
            port,
            index: link.index,
            workers,
            table: Arc::new(WgTable::default()),
            peers: Vec::new(),
            kernel: false,
        })
    }

    /// A kernel WireGuard device, where the kernel has the module (see `kernel`); `None` to
    /// fall back to the userspace data path.
    async fn open_kernel_device(
        &mut self,
        kind: Device,
        name: &'static str,
        port: u16,
    ) -> Result<Option<WgDevice>, BackendError> {
        if !super::kernel::wanted() {
            return Ok(None);
        }
        if let Err(e) = self.nl.create_wireguard(name).await {
            info!(device = name, error = %e, "no kernel WireGuard here; using flanneld's userspace WireGuard");
            return Ok(None);
        }
        let link = self.nl.link_by_name(name).await?.ok_or_else(|| {
            BackendError::Device(format!("{name} vanished right after it was created"))
        })?;
        if self.kernel.is_none() {
            let k = super::kernel::KernelWg::open().map_err(|e| {
                BackendError::Device(format!("kernel WireGuard generic netlink: {e}"))
            })?;
            self.kernel = Some(k);
        }
        self.nl.set_mtu(link.index, self.mtu).await?;
        self.nl.set_up(link.index).await?;
        let mut d = WgDevice {
            kind,
            name,
            port,
            index: link.index,
            workers: Vec::new(),
            table: Arc::new(WgTable::default()),
            peers: Vec::new(),
            kernel: true,
        };
        self.kernel_peers(&mut d, Vec::new())?;
        info!(
            device = name,
            mtu = self.mtu,
            port,
            "wireguard device ready (kernel)"
        );
        Ok(Some(d))
    }

    /// Gives kernel device `d` our key, its port and exactly `peers`.
    fn kernel_peers(&mut self, d: &mut WgDevice, peers: Vec<WgPeer>) -> Result<(), BackendError> {
        let cfg = super::kernel::DeviceConfig {
            ifname: d.name,
            private: &self.private,
            port: d.port,
            psk: self.cfg.psk.as_ref(),
            keepalive: self.cfg.keepalive,
        };
        let Some(k) = self.kernel.as_mut() else {
            return Err(BackendError::Device(
                "kernel WireGuard socket missing".into(),
            ));
        };
        k.set_device(cfg, &peers).map_err(|e| {
            BackendError::Device(format!(
                "configuring kernel WireGuard device {}: {e}",
                d.name
            ))
        })?;
        d.peers = peers;
        Ok(())
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The address of the device: our subnet's network address as /32 (and /128).
    fn addresses(&self, d: &WgDevice, own: &Lease) -> Vec<IpNet> {
        d.networks(self.v4, self.v6, self.cfg.mode)
            .into_iter()
            .filter_map(|n| match n {
                IpNet::V4(_) => Ipv4Net::new(own.subnet.network(), 32).ok().map(IpNet::V4),
                IpNet::V6(_) => own
                    .ipv6_subnet
                    .and_then(|s| Ipv6Net::new(s.network(), 128).ok())
                    .map(IpNet::V6),
            })
            .collect()
    }

    /// Creates device `i` again if it is gone (someone deleted it): new TUN, new workers, the
    /// peers handed over again (with new sessions: a handshake each, at once).
    async fn heal_device(
        &mut self,
        i: usize,
        report: &mut ReconcileReport,
    ) -> Result<(), BackendError> {
        let (name, index) = (self.devices[i].name, self.devices[i].index);
        match self.nl.link_by_name(name).await? {
            Some(l) if l.index == index => return Ok(()),
            _ => {}
        }
        warn!(device = name, "{name} is gone; creating it again");
        let (kind, port) = (self.devices[i].kind, self.devices[i].port);
        self.devices[i].stop();
        let fresh = self.open_device(kind, name, port).await?;
        let peers = std::mem::take(&mut self.devices[i].peers);
        self.devices[i] = fresh;
        self.install(i, peers);
        report.device_recreated = true;
        report.repairs.device += 1;
        Ok(())
    }

    /// MTU, up, our address, the route to the network.
    async fn device_state(
        &mut self,
        i: usize,
        own: &Lease,
        configured: bool,
        report: &mut ReconcileReport,
    ) -> Result<(), BackendError> {
        let d = &self.devices[i];
        let index = d.index;
        crate::datapath::device::keep_mtu_and_up(&self.nl, index, self.mtu, configured, report)
            .await?;
        let want = self.addresses(d, own);
        let networks = d.networks(self.v4, self.v6, self.cfg.mode);
        for family in [Family::V4, Family::V6] {
            let in_family = |a: &IpNet| match family {
                Family::V4 => a.addr().is_ipv4(),
                Family::V6 => a.addr().is_ipv6(),
            };
            if !networks.iter().any(in_family) {
                continue;
            }
            let have = self.nl.addrs(Some(index), family).await?;
            let ours = |a: &IpNet| networks.iter().any(|n| n.contains(&a.addr()));
            for (_, a) in have.iter().filter(|(_, a)| !want.contains(a) && ours(a)) {
                self.nl.del_addr(index, *a).await?;
                report.removed += 1;
            }
            for w in want.iter().filter(|w| in_family(w)) {
                if !have.iter().any(|(_, a)| a == w) {
                    self.nl.add_addr(index, *w).await?;
                    report.added += 1;
                    report.repairs.address += usize::from(configured);
                }
            }
            let table = self.nl.main_routes(family).await?;
            for n in networks.iter().filter(|n| in_family(n)) {
                let present = table
                    .iter()
                    .any(|r| r.dst == *n && r.oif == Some(index) && r.gw.is_none() && r.unicast);
                if !present {
                    self.nl.replace_dev_route(*n, index).await?;
                    report.added += 1;
                    report.repairs.route += usize::from(configured);
                }
            }
        }
        Ok(())
    }

    /// Hands device `i`'s workers a table for `peers` if they changed; whether it did. A peer
    /// whose key, endpoint and allowed IPs stay keeps its sessions.
    fn install(&mut self, i: usize, peers: Vec<WgPeer>) -> bool {
        let d = &self.devices[i];
        if d.kernel {
            if d.peers == peers {
                return false;
            }
            let mut d = std::mem::replace(&mut self.devices[i], placeholder());
            let n = peers.len();
            let r = self.kernel_peers(&mut d, peers);
            self.devices[i] = d;
            if let Err(e) = r {
                warn!(error = %e, "kernel WireGuard peers not set; the next pass tries again");
                self.devices[i].peers.clear();
                return false;
            }
            self.counters.peers.store(n as u64, Ordering::Relaxed);
            return true;
        }
        if d.peers == peers && !d.workers.is_empty() && d.table.len() == peers.len() {
            return false;
        }
        let mut states = Vec::with_capacity(peers.len());
        for p in &peers {
            let kept = d.table.peers().iter().find(|s| {
                s.key == p.public_key && s.endpoint == p.endpoint && s.allowed == p.allowed
            });
            let state = match kept {
                Some(s) => s.clone(),
                None => {
                    self.next_index = (self.next_index + 1) & 0x00ff_ffff;
                    Arc::new(PeerState::new(
                        &self.id,
                        p,
                        self.next_index,
                        self.cfg.psk,
                        self.cfg.keepalive,
                    ))
                }
            };
            states.push(state);
        }
        let table = Arc::new(WgTable::new(states));
        let d = &mut self.devices[i];
        for (tx, wake, _) in &d.workers {
            let _ = tx.send(Ctl::Table(table.clone()));
            wake.wake();
        }
        info!(
            device = d.name,
            peers = table.len(),
            "wireguard peers updated"
        );
        d.table = table;
        d.peers = peers;
        let total: usize = self.devices.iter().map(|d| d.table.len()).sum();
        self.counters.peers.store(total as u64, Ordering::Relaxed);
        true
    }

    /// Logs each drop reason whose count grew since it was last said.
    fn report_drops(&mut self) {
        let c = &self.counters;
        self.drops.report(&[
            (&c.rx_unknown_peer, "dropped wireguard datagrams from no known peer"),
            (&c.rx_invalid, "dropped wireguard datagrams that did not authenticate (wrong key, replay, stale session)"),
            (&c.rx_spoofed_source, "dropped decrypted packets whose source is outside the sending peer's subnet"),
            (&c.rx_under_load, "answered wireguard handshakes with a cookie (under load: more handshakes than a device answers a second)"),
            (&c.rx_rate_limited, "dropped wireguard handshakes over their source address's rate"),
            (&c.rx_handshake_queue_full, "dropped wireguard handshakes: the handshake queue was full (a flood?)"),
        ]);
    }
}

/// Stands in for a device while it is borrowed out of the list.
fn placeholder() -> WgDevice {
    WgDevice {
        kind: Device::Main,
        name: DEVICE,
        port: 0,
        index: 0,
        workers: Vec::new(),
        table: Arc::new(WgTable::default()),
        peers: Vec::new(),
        kernel: true,
    }
}

impl<N: NetOps> Backend for WireguardBackend<N> {
    fn datapath_counters(&self) -> Option<crate::DatapathCounters> {
        Some(crate::DatapathCounters::Wireguard(self.counters.clone()))
    }

    /// A full pass costs little here (no kernel entry per peer): no delta path.
    fn tick(&mut self) {
        self.report_drops();
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        let data = |port| {
            Some(
                WgData {
                    public_key: self.public,
                    port,
                }
                .to_raw(),
            )
        };
        // Outside separate mode one device listens on ListenPort for both families; the v6
        // data names that port, where we really listen (upstream writes ListenPortV6 there).
        let port_v6 = match self.cfg.mode {
            Mode::Separate => self.cfg.listen_port_v6,
            _ => self.cfg.listen_port,
        };
        LeaseAttrs {
            public_ip: self.ext.ext_addr,
            public_ipv6: self.ext.ext_v6_addr,
            backend_type: "wireguard".into(),
            backend_data: self.v4.and_then(|_| data(self.cfg.listen_port)),
            backend_v6_data: self.v6.and_then(|_| data(port_v6)),
        }
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn devices(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.name.to_string()).collect()
    }

    /// See `Backend::expected`: one route per network into its device; the workers pick
    /// the peer.
    fn expected(&self, _own: &Lease, _leases: &[Lease]) -> Vec<KernelEntry> {
        self.devices
            .iter()
            .flat_map(|d| {
                d.networks(self.v4, self.v6, self.cfg.mode)
                    .into_iter()
                    .map(|dst| KernelEntry::Route {
                        dst,
                        gw: None,
                        dev: d.name.into(),
                    })
            })
            .collect()
    }

    async fn reconcile(
        &mut self,
        own: &Lease,
        leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        let mut report = ReconcileReport::default();
        let configured = self.configured;
        for i in 0..self.devices.len() {
            self.heal_device(i, &mut report).await?;
            self.device_state(i, own, configured, &mut report).await?;
            let input = PeerInputs {
                cfg: &self.cfg,
                own,
                v4: self.v4.is_some(),
                v6: self.v6.is_some(),
                local_v6: self.ext.ext_v6_addr,
            };
            let (peers, skipped) = desired_peers(input, self.devices[i].kind, leases);
            report.skipped.extend(skipped);
            if self.install(i, peers) {
                report.added += 1;
            }
        }
        report.dedup_skipped();
        self.configured = true;
        self.report_drops();
        Ok(report)
    }
}

impl<N: NetOps> Drop for WireguardBackend<N> {
    /// Stops the workers; closing the last TUN queue removes the device (upstream deletes
    /// its devices on shutdown too).
    fn drop(&mut self) {
        for d in &mut self.devices {
            d.stop();
        }
    }
}

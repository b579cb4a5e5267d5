//! The wireguard backend as data (upstream `pkg/backend/wireguard`, spec §5.4): its config keys,
//! the lease data `{"PublicKey": ..., "Port": ...}`, and the peers a set of leases asks for,
//! device by device (`Mode`), with their endpoints and allowed IPs.

use base64::Engine;
use flannel_core::json_ci::{CiObject, FieldError};
use flannel_core::lease::Lease;
use flannel_core::raw_json::RawJson;
use ipnet::IpNet;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const DEFAULT_PORT: u16 = 51820;
pub const DEFAULT_PORT_V6: u16 = 51821;
/// What WireGuard costs per packet, as upstream counts it: outer IPv6 (40) + UDP (8) + header
/// and tag (32). The same figure is used over IPv4 (12 bytes to spare).
pub const OVERHEAD: u32 = 80;
/// The device of IPv4 (or of both families outside `separate` mode).
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device in `separate` mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";
/// The private key's file unless `$WIREGUARD_KEY_FILE` names another.
pub const KEY_FILE: &str = "/run/flannel/wgkey";
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

/// A Curve25519 key or a preshared key: 32 bytes, base64 in configs and leases.
pub type Key = [u8; 32];

/// Base64 (standard, padded: what `wg genkey` writes) of a key.
pub fn encode_key(k: &Key) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A key from its base64 text (surrounding white space ignored).
pub fn decode_key(text: &str) -> Result<Key, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    <Key>::try_from(bytes.as_slice()).map_err(|_| format!("{} bytes, a key has 32", bytes.len()))
}

/// Which devices carry which family (upstream `Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One device per family, each with its own port: `flannel-wg` and `flannel-wg-v6`.
    #[default]
    Separate,
    /// One device for both families; each peer's endpoint in IPv4 unless IPv6 is the better
    /// route (see [`auto_endpoint_is_v6`]).
    Auto,
    /// One device for both families, peers reached over IPv4.
    Ipv4,
    /// One device for both families, peers reached over IPv6.
    Ipv6,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }
}

/// The `Backend` object of a wireguard network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    pub psk: Option<Key>,
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// Seconds; 0 = off.
    pub keepalive: u16,
    pub mode: Mode,
    /// 0 = the external interface's MTU.
    pub mtu: u32,
}

impl Default for WgConfig {
    fn default() -> Self {
        Self {
            psk: None,
            listen_port: DEFAULT_PORT,
            listen_port_v6: DEFAULT_PORT_V6,
            keepalive: 0,
            mode: Mode::Separate,
            mtu: 0,
        }
    }
}

fn field(key: &str, expected: &'static str, got: &str) -> FieldError {
    FieldError {
        key: key.into(),
        expected,
        got: got.chars().take(60).collect(),
    }
}

impl WgConfig {
    pub fn from_backend(backend: &Value) -> Result<Self, FieldError> {
        let empty = serde_json::Map::new();
        let o = CiObject::new(backend.as_object().unwrap_or(&empty));
        let port = |k: &str, d: u16| -> Result<u16, FieldError> {
            Ok(o.uint(k, u64::from(u16::MAX))?
                .map(|p| p as u16)
                .filter(|p| *p > 0)
                .unwrap_or(d))
        };
        let psk = match o.str("PSK")? {
            None | Some("") => None,
            Some(s) => Some(decode_key(s).map_err(|_| {
                field("PSK", "a base64 key of 32 bytes (wg genpsk)", "(not shown)")
            })?),
        };
        let mode = match o.str("Mode")?.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("separate") => Mode::Separate,
            Some("auto") => Mode::Auto,
            Some("ipv4") => Mode::Ipv4,
            Some("ipv6") => Mode::Ipv6,
            Some(other) => {
                return Err(field(
                    "Mode",
                    "one of separate, auto, ipv4, ipv6",
                    &format!("{other:?}"),
                ))
            }
        };
        Ok(Self {
            psk,
            listen_port: port("ListenPort", DEFAULT_PORT)?,
            listen_port_v6: port("ListenPortV6", DEFAULT_PORT_V6)?,
            keepalive: o
                .uint("PersistentKeepaliveInterval", u64::from(u16::MAX))?
                .unwrap_or(0) as u16,
            mode,
            mtu: o.uint("MTU", u64::from(u32::MAX))?.unwrap_or(0) as u32,
        })
    }

    /// The devices' MTU and `FLANNEL_MTU`: (configured MTU or interface MTU) − 80.
    pub fn device_mtu(&self, iface_mtu: u32) -> u32 {
        let base = if self.mtu > 0 { self.mtu } else { iface_mtu };
        base.saturating_sub(OVERHEAD)
    }
}

/// `BackendData` / `BackendV6Data` of a wireguard lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgData {
    pub public_key: Key,
    /// 0 in old leases: the reader uses its own listen port.
    pub port: u16,
}

impl WgData {
    pub fn to_value(&self) -> Value {
        json!({"PublicKey": encode_key(&self.public_key), "Port": self.port})
    }

    pub fn to_raw(&self) -> RawJson {
        RawJson::from_value(&self.to_value())
    }

    /// Reads another node's data; the error says what is wrong with it.
    pub fn from_raw(raw: &RawJson) -> Result<Self, String> {
        let v: Value = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        let Some(map) = v.as_object() else {
            return Err(format!("expected an object, got {}", raw.get()));
        };
        let o = CiObject::new(map);
        let key = o
            .str("PublicKey")
            .map_err(|e| e.to_string())?
            .ok_or("no PublicKey")?;
        let public_key = decode_key(key).map_err(|e| format!("PublicKey: {e}"))?;
        let port = o
            .uint("Port", u64::from(u16::MAX))
            .map_err(|e| e.to_string())?
            .unwrap_or(0) as u16;
        Ok(Self { public_key, port })
    }
}

/// One WireGuard peer of one device: who, where, and what it may send and receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: Key,
    pub endpoint: SocketAddr,
    /// The peer's subnets on this device (sorted).
    pub allowed: Vec<IpNet>,
}

/// A lease left out, and why.
pub use crate::peers::Skipped;

/// Which device of ours a peer set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `flannel-wg`: IPv4 in separate mode, both families otherwise.
    Main,
    /// `flannel-wg-v6` (separate mode only).
    V6,
}

/// RFC 1918.
fn is_rfc1918(ip: Ipv4Addr) -> bool {
    ip.is_private()
}

/// fc00::/7.
fn is_ula(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

/// `auto` mode: IPv6 when the peer has only IPv6, or when its IPv4 is RFC 1918-private while
/// both its IPv6 and ours are global (not ULA); IPv4 otherwise.
pub fn auto_endpoint_is_v6(
    peer_v4: Option<Ipv4Addr>,
    peer_v6: Option<Ipv6Addr>,
    local_v6: Option<Ipv6Addr>,
) -> bool {
    match (peer_v4, peer_v6) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(v4), Some(v6)) => {
            is_rfc1918(v4) && !is_ula(v6) && local_v6.is_some_and(|l| !is_ula(l))
        }
    }
}

/// What a node with our config wants on its devices for these leases.
#[derive(Debug, Clone, Copy)]
pub struct PeerInputs<'a> {
    pub cfg: &'a WgConfig,
    pub own: &'a Lease,
    pub v4: bool,
    pub v6: bool,
    /// Our public IPv6 (for `auto`).
    pub local_v6: Option<Ipv6Addr>,
}

fn public_v4(l: &Lease) -> Option<Ipv4Addr> {
    Some(l.attrs.public_ip).filter(|ip| !ip.is_unspecified())
}

fn data(raw: Option<&RawJson>, which: &str) -> Result<Option<WgData>, String> {
    raw.map(|r| WgData::from_raw(r).map_err(|e| format!("{which}: {e}")))
        .transpose()
}

/// The peers of `device` for every known lease: leases of other backend types, our own, and
/// leases whose data is unusable are skipped (and reported), never fatal.
pub fn desired_peers(
    input: PeerInputs<'_>,
    device: Device,
    leases: &[Lease],
) -> (Vec<WgPeer>, Vec<Skipped>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    let own_key = input.own.key();
    for l in leases {
        if l.key() == own_key {
            continue;
        }
        match peer_of(input, device, l) {
            Ok(Some(p)) => peers.push(p),
            Ok(None) => {}
            Err(reason) => skipped.push(Skipped {
                key: l.key(),
                reason,
            }),
        }
    }
    peers.sort_by(|a, b| a.allowed.cmp(&b.allowed));
    (peers, skipped)
}

fn peer_of(input: PeerInputs<'_>, device: Device, l: &Lease) -> Result<Option<WgPeer>, String> {
    if l.attrs.backend_type != "wireguard" {
        return Err(format!(
            "backend type {:?} is not \"wireguard\"",
            l.attrs.backend_type
        ));
    }
    let cfg = input.cfg;
    let d4 = data(l.attrs.backend_data.as_ref(), "BackendData")?;
    let d6 = data(l.attrs.backend_v6_data.as_ref(), "BackendV6Data")?;
    let port_or = |p: u16, own: u16| if p == 0 { own } else { p };
    let overlaps = |n: IpNet| {
        let own: Vec<IpNet> = [
            Some(IpNet::V4(input.own.subnet)),
            input.own.ipv6_subnet.map(IpNet::V6),
        ]
        .into_iter()
        .flatten()
        .collect();
        own.iter().any(|o| o.contains(&n) || n.contains(o))
    };
    let v4_net = input.v4.then_some(IpNet::V4(l.subnet));
    let v6_net = if input.v6 {
        l.ipv6_subnet.map(IpNet::V6)
    } else {
        None
    };
    for n in [v4_net, v6_net].into_iter().flatten() {
        if overlaps(n) {
            return Err(format!("{n} overlaps our own subnet"));
        }
    }
    let (key, endpoint, allowed): (Key, SocketAddr, Vec<IpNet>) = match (cfg.mode, device) {
        (Mode::Separate, Device::Main) => {
            let Some(net) = v4_net else { return Ok(None) };
            let d = d4.ok_or("no BackendData (PublicKey, Port)")?;
            let ip = public_v4(l).ok_or("PublicIP is 0.0.0.0")?;
            (
                d.public_key,
                SocketAddr::new(IpAddr::V4(ip), port_or(d.port, cfg.listen_port)),
                vec![net],
            )
        }
        (Mode::Separate, Device::V6) => {
            let Some(net) = v6_net else { return Ok(None) };
            let d = d6.ok_or("no BackendV6Data (PublicKey, Port)")?;
            let ip = l.attrs.public_ipv6.ok_or("PublicIPv6 is not set")?;
            (
                d.public_key,
                SocketAddr::new(IpAddr::V6(ip), port_or(d.port, cfg.listen_port_v6)),
                vec![net],
            )
        }
        (_, Device::V6) => return Ok(None),
        (mode, Device::Main) => {
            let allowed: Vec<IpNet> = [v4_net, v6_net].into_iter().flatten().collect();
            if allowed.is_empty() {
                return Ok(None);
            }
            let v4 = public_v4(l);
            let v6 = l.attrs.public_ipv6;
            let use_v6 = match mode {
                Mode::Ipv6 => true,
                Mode::Ipv4 => false,
                _ => auto_endpoint_is_v6(v4, v6, input.local_v6),
            };
            // Upstream's quirk kept: an IPv6 endpoint takes the port of BackendV6Data.
            let (ip, d, own_port) = if use_v6 {
                let ip = v6.ok_or("PublicIPv6 is not set")?;
                let d = d6.or(d4).ok_or("no BackendV6Data (PublicKey, Port)")?;
                (IpAddr::V6(ip), d, cfg.listen_port)
            } else {
                let ip = v4.ok_or("PublicIP is 0.0.0.0")?;
                let d = d4.or(d6).ok_or("no BackendData (PublicKey, Port)")?;
                (IpAddr::V4(ip), d, cfg.listen_port)
            };
            (
                d.public_key,
                SocketAddr::new(ip, port_or(d.port, own_port)),
                allowed,
            )
        }
    };
    Ok(Some(WgPeer {
        public_key: key,
        endpoint,
        allowed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::lease::LeaseAttrs;

    fn key(b: u8) -> Key {
        [b; 32]
    }

    fn lease(n: u8, v6: bool) -> Lease {
        let d = WgData {
            public_key: key(n),
            port: 51820,
        };
        let d6 = WgData {
            public_key: key(n),
            port: 51821,
        };
        Lease {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            ipv6_subnet: v6.then(|| format!("fd10:{n}::/64").parse().unwrap()),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::new(10, 0, 0, n),
                public_ipv6: v6.then(|| format!("fd00::{n}").parse().unwrap()),
                backend_type: "wireguard".into(),
                backend_data: Some(d.to_raw()),
                backend_v6_data: v6.then(|| d6.to_raw()),
            },
        }
    }

    #[test]
    fn config_defaults_keys_and_errors() {
        let d = WgConfig::from_backend(&json!({"Type": "wireguard"})).unwrap();
        assert_eq!(d, WgConfig::default());
        assert_eq!(d.device_mtu(1500), 1420);
        let psk = encode_key(&key(7));
        let c =
            WgConfig::from_backend(&json!({"type": "wireguard", "psk": psk, "listenPort": 5000,
            "ListenPortV6": 5001, "PersistentKeepaliveInterval": 25, "Mode": "Auto", "MTU": 9000}))
            .unwrap();
        assert_eq!(c.psk, Some(key(7)));
        assert_eq!(
            (c.listen_port, c.listen_port_v6, c.keepalive),
            (5000, 5001, 25)
        );
        assert_eq!((c.mode, c.device_mtu(1500)), (Mode::Auto, 8920));
        let e = WgConfig::from_backend(&json!({"PSK": "c2hvcnQ="})).unwrap_err();
        assert_eq!(e.key, "PSK");
        let e = WgConfig::from_backend(&json!({"Mode": "both"})).unwrap_err();
        assert!(e.to_string().contains("separate, auto"), "{e}");
        assert!(WgConfig::from_backend(&json!({"ListenPort": 70000})).is_err());
    }

    #[test]
    fn lease_data_round_trips_and_bad_data_is_named() {
        let d = WgData {
            public_key: key(3),
            port: 51820,
        };
        let raw = d.to_raw();
        assert_eq!(
            raw.get(),
            format!(r#"{{"Port":51820,"PublicKey":"{}"}}"#, encode_key(&key(3)))
        );
        assert_eq!(WgData::from_raw(&raw), Ok(d));
        let bad = RawJson::from_text(r#"{"PublicKey":"AAAA","Port":1}"#).unwrap();
        assert!(WgData::from_raw(&bad).unwrap_err().contains("3 bytes"));
        let none = RawJson::from_text(r#"{"Port":1}"#).unwrap();
        assert_eq!(WgData::from_raw(&none).unwrap_err(), "no PublicKey");
    }

    #[test]
    fn separate_mode_gives_each_family_its_device_and_port() {
        let cfg = WgConfig::default();
        let own = lease(1, true);
        let leases = vec![own.clone(), lease(2, true), lease(3, false)];
        let input = PeerInputs {
            cfg: &cfg,
            own: &own,
            v4: true,
            v6: true,
            local_v6: None,
        };
        let (main, skipped) = desired_peers(input, Device::Main, &leases);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(main.len(), 2);
        assert_eq!(main[0].endpoint, "10.0.0.2:51820".parse().unwrap());
        assert_eq!(
            main[0].allowed,
            vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
        );
        let (v6, _) = desired_peers(input, Device::V6, &leases);
        assert_eq!(v6.len(), 1, "the v4-only peer has no v6 peer");
        assert_eq!(v6[0].endpoint, "[fd00::2]:51821".parse().unwrap());
        assert_eq!(v6[0].public_key, key(2));
    }

    #[test]
    fn single_device_modes_carry_both_families_and_choose_the_endpoint() {
        let own = lease(1, true);
        let leases = vec![own.clone(), lease(2, true)];
        for (mode, want) in [
            (Mode::Ipv4, "10.0.0.2:51820"),
            (Mode::Ipv6, "[fd00::2]:51821"),
            // auto: ULA IPv6 is never preferred.
            (Mode::Auto, "10.0.0.2:51820"),
        ] {
            let cfg = WgConfig {
                mode,
                ..Default::default()
            };
            let input = PeerInputs {
                cfg: &cfg,
                own: &own,
                v4: true,
                v6: true,
                local_v6: Some("fd00::1".parse().unwrap()),
            };
            let (p, _) = desired_peers(input, Device::Main, &leases);
            assert_eq!(p[0].endpoint, want.parse().unwrap(), "{mode:?}");
            assert_eq!(p[0].allowed.len(), 2);
            assert!(desired_peers(input, Device::V6, &leases).0.is_empty());
        }
        let g: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert!(auto_endpoint_is_v6(
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            Some(g),
            Some(g)
        ));
        assert!(!auto_endpoint_is_v6(
            Some(Ipv4Addr::new(8, 8, 8, 8)),
            Some(g),
            Some(g)
        ));
        assert!(!auto_endpoint_is_v6(
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            Some(g),
            None
        ));
        assert!(auto_endpoint_is_v6(None, Some(g), None));
    }

    #[test]
    fn unusable_leases_are_skipped_with_their_reason() {
        let cfg = WgConfig::default();
        let own = lease(1, false);
        let mut vx = lease(2, false);
        vx.attrs.backend_type = "vxlan".into();
        let mut nodata = lease(3, false);
        nodata.attrs.backend_data = None;
        let mut badkey = lease(4, false);
        badkey.attrs.backend_data = Some(RawJson::from_text(r#"{"PublicKey":"!!"}"#).unwrap());
        let mut port0 = lease(5, false);
        port0.attrs.backend_data = Some(
            WgData {
                public_key: key(5),
                port: 0,
            }
            .to_raw(),
        );
        let input = PeerInputs {
            cfg: &cfg,
            own: &own,
            v4: true,
            v6: false,
            local_v6: None,
        };
        let (p, skipped) = desired_peers(
            input,
            Device::Main,
            &[own.clone(), vx, nodata, badkey, port0],
        );
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("vxlan"));
        assert!(reasons[1].contains("no BackendData"));
        assert!(reasons[2].contains("not base64"));
        // Port 0: the reader's own listen port (upstream's backwards compatibility).
        assert_eq!(p[0].endpoint, "10.0.0.5:51820".parse().unwrap());
    }
}

//! `subnet.env`: the file flanneld writes for the CNI plugin (upstream `WriteSubnetFile`), and
//! reading back the previous subnet and network from it at restart.

use crate::subnet::{first_host_v4, first_host_v6};
use ipnet::{Ipv4Net, Ipv6Net};
use std::io::Write;
use std::path::Path;

/// What goes into subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// Config `Network` and the lease subnet, when IPv4 is enabled.
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    /// Config `IPv6Network` and the lease v6 subnet, when IPv6 is enabled.
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The exact text upstream writes: lines in fixed order, `KEY=value`, no quoting.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some((net, sub)) = self.v4 {
            s += &format!("FLANNEL_NETWORK={net}\n");
            s += &format!(
                "FLANNEL_SUBNET={}/{}\n",
                first_host_v4(sub),
                sub.prefix_len()
            );
        }
        if let Some((net, sub)) = self.v6 {
            s += &format!("FLANNEL_IPV6_NETWORK={net}\n");
            s += &format!(
                "FLANNEL_IPV6_SUBNET={}/{}\n",
                first_host_v6(sub),
                sub.prefix_len()
            );
        }
        s += &format!("FLANNEL_MTU={}\n", self.mtu);
        s += &format!("FLANNEL_IPMASQ={}\n", self.ipmasq);
        s
    }

    /// Writes atomically: parent directories (0755), a temporary file in the same directory,
    /// fsync, mode 0644 whatever the umask, rename over the target.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        write_file_atomic(path, self.render().as_bytes(), 0o644)
    }
}

/// Atomic replace of `path` with `data`, so a reader sees the old or the new file, never half.
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `KEY=value` pairs of an env file, split at the first `=`; blank lines and `#` comments
/// skipped; surrounding quotes and an `export ` prefix tolerated (godotenv reads them so).
pub fn parse_env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// subnet.env as read back, typed: the one reader of the file (flanneld at restart, the CNI
/// plugin, flannelctl doctor). Networks may be comma-separated lists (upstream's plugin reads
/// them so); host bits are cleared. A key whose value does not parse is left out of the typed
/// fields and listed in `invalid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetFile {
    pub networks: Vec<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_networks: Vec<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
    /// Entries that do not parse: key, value, what was expected; in file order.
    pub invalid: Vec<(String, String, &'static str)>,
}

impl SubnetFile {
    pub fn parse(text: &str) -> Self {
        let mut f = Self::default();
        for (k, v) in parse_env_lines(text) {
            let ok = match k.as_str() {
                "FLANNEL_NETWORK" => cidrs(&v).map(|n| f.networks = n).ok_or("invalid IPv4 CIDR"),
                "FLANNEL_IPV6_NETWORK" => cidrs(&v)
                    .map(|n| f.ipv6_networks = n)
                    .ok_or("invalid IPv6 CIDR"),
                "FLANNEL_SUBNET" => cidr(&v)
                    .map(|n| f.subnet = Some(n))
                    .ok_or("invalid IPv4 CIDR"),
                "FLANNEL_IPV6_SUBNET" => cidr(&v)
                    .map(|n| f.ipv6_subnet = Some(n))
                    .ok_or("invalid IPv6 CIDR"),
                "FLANNEL_MTU" => v
                    .parse()
                    .ok()
                    .map(|m| f.mtu = Some(m))
                    .ok_or("not an unsigned integer"),
                "FLANNEL_IPMASQ" => {
                    f.ipmasq = Some(v == "true");
                    Ok(())
                }
                _ => Ok(()),
            };
            if let Err(expected) = ok {
                f.invalid.push((k, v, expected));
            }
        }
        f
    }

    /// The IPv4 network when the file names exactly one.
    pub fn network(&self) -> Option<Ipv4Net> {
        only(&self.networks)
    }

    /// The IPv6 network when the file names exactly one.
    pub fn ipv6_network(&self) -> Option<Ipv6Net> {
        only(&self.ipv6_networks)
    }
}

fn only<T: Copy>(v: &[T]) -> Option<T> {
    match v {
        [one] => Some(*one),
        _ => None,
    }
}

fn cidr<T: std::str::FromStr + Trunc>(v: &str) -> Option<T> {
    v.trim().parse::<T>().ok().map(Trunc::trunc_net)
}

/// Every item of a comma-separated list, or `None` when one does not parse.
fn cidrs<T: std::str::FromStr + Trunc>(v: &str) -> Option<Vec<T>> {
    v.split(',').map(cidr).collect()
}

/// What a previous run left in subnet.env: used to take the same subnet back and to recycle
/// rules for an old network. Entries that do not parse as exactly one CIDR are treated as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousSubnets {
    pub network: Option<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
}

impl PreviousSubnets {
    pub fn parse(text: &str) -> Self {
        let f = SubnetFile::parse(text);
        Self {
            network: f.network(),
            subnet: f.subnet,
            ipv6_network: f.ipv6_network(),
            ipv6_subnet: f.ipv6_subnet,
        }
    }

    /// Reads the file; a missing or unreadable file means "no previous run".
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }
}

/// Host bits cleared, for both families.
pub trait Trunc {
    fn trunc_net(self) -> Self;
}
impl Trunc for Ipv4Net {
    fn trunc_net(self) -> Self {
        self.trunc()
    }
}
impl Trunc for Ipv6Net {
    fn trunc_net(self) -> Self {
        self.trunc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tutorial_file() {
        let e = SubnetEnv {
            v4: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.0.0/24".parse().unwrap(),
            )),
            v6: None,
            mtu: 1450,
            ipmasq: true,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn renders_dual_stack_in_upstream_order() {
        let e = SubnetEnv {
            v4: Some((
                "10.42.0.0/16".parse().unwrap(),
                "10.42.0.0/24".parse().unwrap(),
            )),
            v6: Some((
                "2001:cafe:42::/56".parse().unwrap(),
                "2001:cafe:42::/64".parse().unwrap(),
            )),
            mtu: 1450,
            ipmasq: false,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn atomic_write_creates_dirs_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!(
            "flannel-core-env-{}",
            crate::allocator::random_u64()
        ));
        let p = d.join("a/b/subnet.env");
        let e = SubnetEnv {
            v4: None,
            v6: None,
            mtu: 1500,
            ipmasq: false,
        };
        e.write_atomic(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn previous_subnets_skip_invalid_entries() {
        let p = PreviousSubnets::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=bogus\nFLANNEL_IPV6_SUBNET=fd00::1/64,fd01::1/64\n",
        );
        assert_eq!(p.network, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(p.subnet, Some("10.244.7.0/24".parse().unwrap()));
        assert_eq!(p.ipv6_network, None);
        assert_eq!(
            p.ipv6_subnet, None,
            "two entries are not one previous subnet"
        );
        assert_eq!(
            PreviousSubnets::read(Path::new("/nonexistent/subnet.env")),
            PreviousSubnets::default()
        );
    }

    #[test]
    fn the_one_reader_types_lists_and_names_what_does_not_parse() {
        let f = SubnetFile::parse(
            "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_SUBNET=nope\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        );
        assert_eq!(f.networks.len(), 2);
        assert_eq!(f.network(), None, "a list is not one network");
        assert_eq!(f.subnet.unwrap().to_string(), "10.1.17.0/24");
        assert_eq!((f.mtu, f.ipmasq), (Some(1472), Some(true)));
        assert_eq!(
            f.invalid,
            vec![(
                "FLANNEL_IPV6_SUBNET".into(),
                "nope".into(),
                "invalid IPv6 CIDR"
            )]
        );
        let bad_item = SubnetFile::parse("FLANNEL_NETWORK=10.1.0.0/16,junk\n");
        assert!(bad_item.networks.is_empty() && bad_item.invalid.len() == 1);
    }
}

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
        let mut p = Self::default();
        for (k, v) in parse_env_lines(text) {
            match k.as_str() {
                "FLANNEL_NETWORK" => p.network = one_cidr(&v),
                "FLANNEL_SUBNET" => p.subnet = one_cidr(&v),
                "FLANNEL_IPV6_NETWORK" => p.ipv6_network = one_cidr(&v),
                "FLANNEL_IPV6_SUBNET" => p.ipv6_subnet = one_cidr(&v),
                _ => {}
            }
        }
        p
    }

    /// Reads the file; a missing or unreadable file means "no previous run".
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }
}

fn one_cidr<T: std::str::FromStr + Copy + Trunc>(v: &str) -> Option<T> {
    let mut parts = v.split(',');
    let first = parts.next()?.trim().parse::<T>().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(first.trunc_net())
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
}

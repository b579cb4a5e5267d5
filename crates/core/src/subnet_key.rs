//! Subnet keys under `<prefix>/subnets/`: `10.244.1.0-24` and the dual-stack form
//! `10.244.1.0-24&fd00:12:13::-56` (upstream `MakeSubnetKey` / `ParseSubnetKey`).

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a subnet key (want <ipv4>-<len>[&<ipv6>-<len>])")]
pub struct NotASubnet(pub String);

impl SubnetKey {
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Self {
        Self { v4, v6 }
    }

    /// Parses the last path segment of a key. Like upstream, prefix lengths are limited to
    /// 0..=31 (v4) and 0..=127 (v6), and the address must be the network address... upstream
    /// does not insist on the latter, so host bits are cleared instead of rejected.
    pub fn parse(s: &str) -> Result<Self, NotASubnet> {
        let bad = || NotASubnet(s.to_string());
        let (v4part, v6part) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (ip, len) = v4part.rsplit_once('-').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len = parse_len(len, 31).ok_or_else(bad)?;
        let v4 = Ipv4Net::new(ip, len).map_err(|_| bad())?.trunc();
        let v6 = match v6part {
            None => None,
            Some(p) => {
                let (ip, len) = p.rsplit_once('-').ok_or_else(bad)?;
                if ip
                    .bytes()
                    .any(|c| !(c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b':'))
                {
                    return Err(bad());
                }
                let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
                let len = parse_len(len, 127).ok_or_else(bad)?;
                Some(Ipv6Net::new(ip, len).map_err(|_| bad())?.trunc())
            }
        };
        Ok(Self { v4, v6 })
    }
}

fn parse_len(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|l| *l <= max)
}

impl std::fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.v4.network(), self.v4.prefix_len())?;
        if let Some(v6) = self.v6 {
            write!(f, "&{}-{}", v6.network(), v6.prefix_len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_upstream_examples() {
        for s in [
            "10.12.13.0-24",
            "10.12.13.0-24&fd00:12:13::-56",
            "0.0.0.0-0",
        ] {
            assert_eq!(SubnetKey::parse(s).unwrap().to_string(), s);
        }
        let k = SubnetKey::parse("10.12.13.0-24&fd00:12:13::-56").unwrap();
        assert_eq!(k.v4.to_string(), "10.12.13.0/24");
        assert_eq!(k.v6.unwrap().to_string(), "fd00:12:13::/56");
    }

    #[test]
    fn malformed_keys_rejected() {
        for s in [
            "",
            "10.12.13.0",
            "10.12.13.0-",
            "10.12.13.0-32",
            "10.12.13.0-24&",
            "10.12.13.0-24&fd00::",
            "10.12.13.0-24&fd00::-128",
            "foo-24",
            "10.12.13-24",
            "10.12.13.0/24",
            "10.12.13.0-2x",
            "10.12.13.0-24&FD00::-56",
            "10.12.13.0--24",
            "10.12.13.0-024444",
        ] {
            assert!(SubnetKey::parse(s).is_err(), "{s:?} should be rejected");
        }
    }
}

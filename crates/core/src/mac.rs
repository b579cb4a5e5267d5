//! MAC addresses: parsing (the forms Go's `net.ParseMAC` takes for 48-bit addresses), the
//! lower-case colon text form flannel writes, and random locally administered unicast MACs.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct MacParseError(pub String);

impl MacAddr {
    /// A random MAC with the locally-administered bit set and the multicast bit clear, as
    /// upstream's `pkg/mac` makes them: `(b0 & 0xfe) | 0x02`.
    pub fn random() -> Self {
        let r = crate::allocator::random_u64().to_le_bytes();
        let mut b = [r[0], r[1], r[2], r[3], r[4], r[5]];
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether frames can be addressed to this MAC alone: not all zeros, and without the
    /// group bit (multicast and broadcast addresses, which no VTEP owns and the kernel
    /// refuses as a permanent FDB entry).
    pub fn is_unicast(&self) -> bool {
        !self.is_zero() && self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let hex: String = if s.len() == 17 && (s.contains(':') || s.contains('-')) {
            let sep = s.as_bytes()[2];
            if s.split(sep as char).count() != 6 || s.split(sep as char).any(|p| p.len() != 2) {
                return Err(err());
            }
            s.split(sep as char).collect()
        } else if s.len() == 14 && s.split('.').count() == 3 {
            // Cisco-style aabb.ccdd.eeff
            if s.split('.').any(|p| p.len() != 4) {
                return Err(err());
            }
            s.split('.').collect()
        } else {
            return Err(err());
        };
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(err)?, 16)
                .map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

/// As its text (`aa:bb:cc:dd:ee:ff`), the way `ip` and the leases write it.
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let m: MacAddr = "C6:D2:32:6f:8f:44".parse().unwrap();
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!("c6-d2-32-6f-8f-44".parse::<MacAddr>().unwrap(), m);
        assert_eq!("c6d2.326f.8f44".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "zz:d2:32:6f:8f:44",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2-32:6f:8f:44",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_is_local_unicast() {
        for _ in 0..64 {
            let m = MacAddr::random();
            assert_eq!(m.0[0] & 0x01, 0, "unicast");
            assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(MacAddr::random(), MacAddr::random());
    }
}

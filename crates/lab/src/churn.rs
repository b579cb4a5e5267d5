//! Lease churn as the kernel sees it: leases written to etcd at a steady pace (through etcd's
//! JSON gateway on one kept-alive connection, from inside the node's namespace) while
//! `ip -ts monitor route` records when each route appears or goes. Latency is the kernel's
//! timestamp minus the moment the write was sent, both wall-clock.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

/// Standard base64 (etcd's gateway takes keys and values in it).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One etcd write: put `value` under `key`, or delete `key` when `value` is `None`.
pub struct Write1 {
    pub key: String,
    pub value: Option<String>,
}

/// Sends `writes` to etcd at 127.0.0.1:2379 inside namespace `ns`, `gap` apart; returns when
/// each was sent.
pub fn write_paced(
    ns: &str,
    writes: Vec<Write1>,
    gap: Duration,
) -> anyhow::Result<Vec<SystemTime>> {
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening /run/netns/{ns}"))?;
    std::thread::spawn(move || -> anyhow::Result<Vec<SystemTime>> {
        // SAFETY: setns(2) on this thread only, with a descriptor that is open for the call.
        if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let mut s = TcpStream::connect(("127.0.0.1", 2379)).context("connecting to etcd")?;
        s.set_nodelay(true)?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut sent = Vec::with_capacity(writes.len());
        let mut next = std::time::Instant::now();
        for w in writes {
            std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            next += gap;
            let (path, body) = match &w.value {
                Some(v) => (
                    "/v3/kv/put",
                    format!(
                        r#"{{"key":"{}","value":"{}"}}"#,
                        base64(w.key.as_bytes()),
                        base64(v.as_bytes())
                    ),
                ),
                None => (
                    "/v3/kv/deleterange",
                    format!(r#"{{"key":"{}"}}"#, base64(w.key.as_bytes())),
                ),
            };
            sent.push(SystemTime::now());
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            read_response(&mut r).with_context(|| format!("etcd {path} {}", w.key))?;
        }
        Ok(sent)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the etcd writer thread panicked"))?
}

fn read_response(r: &mut impl BufRead) -> anyhow::Result<()> {
    let mut status = String::new();
    r.read_line(&mut status)?;
    if !status.contains(" 200 ") {
        bail!("answered {}", status.trim());
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(())
}

/// When `ip -ts monitor route` saw `dst` appear (`deleted` false) or go (true): the first such
/// line at or after `after`.
pub fn kernel_time(
    monitor: &str,
    dst: &str,
    deleted: bool,
    after: SystemTime,
) -> Option<SystemTime> {
    monitor.lines().find_map(|l| {
        let (ts, rest) = l.strip_prefix('[')?.split_once("] ")?;
        let rest = rest.trim_start();
        let hit = if deleted {
            rest.strip_prefix("Deleted ")?
                .starts_with(&format!("{dst} "))
        } else {
            rest.starts_with(&format!("{dst} "))
        };
        let t = parse_ts(ts)?;
        (hit && t >= after).then_some(t)
    })
}

/// `2026-11-30T09:40:12.123456` (UTC, as `ip -ts` prints with TZ=UTC) → wall-clock time.
fn parse_ts(ts: &str) -> Option<SystemTime> {
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs as u64)
            + Duration::from_micros(micros as u64),
    )
}

/// The `q`-quantile (0..=1) of `v`, nearest rank.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"/coreos.com/network/subnets/100.64.1.0-24"),
            "L2NvcmVvcy5jb20vbmV0d29yay9zdWJuZXRzLzEwMC42NC4xLjAtMjQ="
        );
    }

    #[test]
    fn monitor_lines_give_kernel_times() {
        let m = "[2026-11-30T09:40:12.100000] 100.64.1.0/24 via 100.64.1.0 dev flannel.1 proto 252 onlink \n\
                 [2026-11-30T09:40:12.250000] Deleted 100.64.1.0/24 via 100.64.1.0 dev flannel.1 proto 252 onlink \n";
        let epoch = |s: u64, us: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us)
        };
        // 2026-11-30T09:40:12 UTC
        let base = 1_796_031_612;
        assert_eq!(
            kernel_time(m, "100.64.1.0/24", false, epoch(base, 0)),
            Some(epoch(base, 100_000))
        );
        assert_eq!(
            kernel_time(m, "100.64.1.0/24", true, epoch(base, 0)),
            Some(epoch(base, 250_000))
        );
        assert_eq!(
            kernel_time(m, "100.64.1.0/24", false, epoch(base, 200_000)),
            None
        );
        assert_eq!(
            kernel_time(m, "100.64.10.0/24", false, epoch(base, 0)),
            None
        );
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
    }
}

//! Runs `iptables` and `iptables-restore` (upstream drives the same binaries through
//! go-iptables). Calls block; async callers use `spawn_blocking`.

use flannel_core::iptables::{restore_payload, Rule};
use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// The iptables binaries for one family (`iptables` / `ip6tables`).
#[derive(Debug, Clone)]
pub struct Iptables {
    bin: String,
    restore: String,
    wait: bool,
    random_fully: bool,
}

/// `(major, minor, patch)` from `iptables v1.8.9 (nf_tables)`.
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

impl Iptables {
    /// Probes the installed version: `--wait` for restore and `--random-fully` both need ≥ 1.6.2.
    pub fn ipv4() -> Self {
        Self::probe("iptables", "iptables-restore")
    }

    pub fn ipv6() -> Self {
        Self::probe("ip6tables", "ip6tables-restore")
    }

    pub fn binary(&self) -> &str {
        &self.bin
    }

    fn probe(bin: &str, restore: &str) -> Self {
        let ver = |b: &str| {
            Command::new(b)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)))
        };
        let ok = |v: Option<(u32, u32, u32)>| v.is_some_and(|v| v >= (1, 6, 2));
        Self {
            bin: bin.into(),
            restore: restore.into(),
            wait: ok(ver(restore)),
            random_fully: ok(ver(bin)),
        }
    }

    pub fn has_random_fully(&self) -> bool {
        self.random_fully
    }

    fn run(&self, args: &[&str]) -> Result<std::process::Output, IptablesError> {
        let cmd = format!("{} {}", self.bin, args.join(" "));
        Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| IptablesError::Spawn { cmd, source })
    }

    /// `iptables -t T -C CHAIN args`: does the rule exist?
    pub fn exists(&self, r: &Rule) -> Result<bool, IptablesError> {
        let mut args = vec!["-w", "-t", r.table, "-C", r.chain];
        args.extend(r.args.iter().map(String::as_str));
        let out = self.run(&args)?;
        // Exit 1: rule (or chain) not there. Anything else is a real failure.
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(IptablesError::Failed {
                cmd: format!("{} {}", self.bin, args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }

    /// `iptables -t T -N CHAIN`, tolerating an existing chain.
    pub fn ensure_chain(&self, table: &str, chain: &str) -> Result<(), IptablesError> {
        let out = self.run(&["-w", "-t", table, "-N", chain])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("exists") {
            return Ok(());
        }
        Err(IptablesError::Failed {
            cmd: format!("{} -t {table} -N {chain}", self.bin),
            stderr: stderr.trim().into(),
        })
    }

    /// Whether every rule is in place.
    pub fn all_present(&self, rules: &[Rule]) -> Result<bool, IptablesError> {
        for r in rules {
            if !self.exists(r)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Upstream's bootstrap: create the flannel chains, then one `iptables-restore --noflush` per
    /// table that deletes each existing rule and appends the whole list in order.
    pub fn apply(&self, rules: &[Rule]) -> Result<(), IptablesError> {
        let builtin = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];
        let mut tables: Vec<&str> = Vec::new();
        for r in rules {
            if !builtin.contains(&r.chain) {
                self.ensure_chain(r.table, r.chain)?;
            }
            if !tables.contains(&r.table) {
                tables.push(r.table);
            }
        }
        let mut with_state = Vec::with_capacity(rules.len());
        for r in rules {
            with_state.push((r, self.exists(r)?));
        }
        for t in tables {
            self.restore(&restore_payload(t, &with_state))?;
        }
        Ok(())
    }

    /// Deletes the rules that exist (used to recycle rules of an old network or subnet).
    pub fn delete_existing(&self, rules: &[Rule]) -> Result<(), IptablesError> {
        for r in rules {
            if self.exists(r)? {
                let mut args = vec!["-w", "-t", r.table, "-D", r.chain];
                args.extend(r.args.iter().map(String::as_str));
                self.run(&args)?;
            }
        }
        Ok(())
    }

    /// `iptables -t T -S CHAIN` lines, empty when the chain does not exist.
    pub fn list(&self, table: &str, chain: &str) -> Result<Vec<String>, IptablesError> {
        let out = self.run(&["-w", "-t", table, "-S", chain])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect())
    }

    /// Removes flannel's chains from `table` and every rule jumping to them (used when
    /// nftables mode takes over). Missing chains are fine.
    pub fn remove_chain(&self, table: &str, from: &str, chain: &str) -> Result<(), IptablesError> {
        for line in self.list(table, from)? {
            if line.ends_with(&format!("-j {chain}")) {
                let args = shell_words(&line.replacen("-A ", "-D ", 1));
                let mut full = vec!["-w".to_string(), "-t".into(), table.into()];
                full.extend(args);
                let refs: Vec<&str> = full.iter().map(String::as_str).collect();
                self.run(&refs)?;
            }
        }
        let _ = self.run(&["-w", "-t", table, "-F", chain])?;
        let _ = self.run(&["-w", "-t", table, "-X", chain])?;
        Ok(())
    }

    fn restore(&self, payload: &str) -> Result<(), IptablesError> {
        let mut args = vec!["--noflush"];
        if self.wait {
            args.push("--wait");
        }
        let cmd = format!("{} {}", self.restore, args.join(" "));
        let mut child = Command::new(&self.restore)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| IptablesError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(payload.as_bytes())
                .map_err(|source| IptablesError::Spawn {
                    cmd: cmd.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| IptablesError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                cmd: format!("{cmd} <<< {payload:?}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// Splits an `iptables -S` line into arguments, honouring double quotes.
pub fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_listing_lines() {
        assert_eq!(
            shell_words(
                r#"-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#
            ),
            [
                "-D",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG"
            ]
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables-restore v1.6.1"), Some((1, 6, 1)));
        assert_eq!(parse_version("garbage"), None);
    }
}

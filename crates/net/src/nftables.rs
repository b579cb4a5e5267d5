//! Runs `nft` (upstream drives it through knftables): transactions from a script on stdin,
//! table listings, deletions, and the `fully-random` probe.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String), NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut s)) = (stdin, child.stdin.take()) {
        s.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Applies a script as one atomic transaction (`nft -f -`).
pub fn apply(script: &str) -> Result<(), NftError> {
    let (ok, _, stderr) = nft(&["-f", "-"], Some(script))?;
    if !ok {
        return Err(NftError::Failed {
            args: format!("-f - <<< {script:?}"),
            stderr,
        });
    }
    Ok(())
}

/// `nft [-j] list table <family> <table>`, `None` when the table does not exist.
fn listing(json: bool, family: &str, table: &str) -> Result<Option<String>, NftError> {
    let mut args = if json { vec!["-j"] } else { Vec::new() };
    args.extend(["list", "table", family, table]);
    let (ok, out, stderr) = nft(&args, None)?;
    if ok {
        return Ok(Some(out));
    }
    if stderr.contains("No such file or directory") {
        return Ok(None);
    }
    Err(NftError::Failed {
        args: args.join(" "),
        stderr,
    })
}

/// `nft list table <family> <table>`, `None` when the table does not exist.
pub fn list_table(family: &str, table: &str) -> Result<Option<String>, NftError> {
    listing(false, family, table)
}

/// `nft -j list table <family> <table>` (JSON), `None` when the table does not exist.
pub fn list_table_json(family: &str, table: &str) -> Result<Option<String>, NftError> {
    listing(true, family, table)
}

/// Deletes a table if it exists; whether it did.
pub fn delete_table(family: &str, table: &str) -> Result<bool, NftError> {
    if list_table(family, table)?.is_none() {
        return Ok(false);
    }
    let (ok, _, stderr) = nft(&["delete", "table", family, table], None)?;
    if !ok {
        return Err(NftError::Failed {
            args: format!("delete table {family} {table}"),
            stderr,
        });
    }
    Ok(true)
}

/// Whether the kernel and nft take `masquerade fully-random` (a dry run, `nft -c`).
pub fn supports_fully_random() -> bool {
    let probe = "add table ip flannel-probe\n\
                 add chain ip flannel-probe masqueradeTest { type nat hook postrouting priority srcnat ; }\n\
                 add rule ip flannel-probe masqueradeTest masquerade fully-random\n";
    matches!(nft(&["-c", "-f", "-"], Some(probe)), Ok((true, _, _)))
}

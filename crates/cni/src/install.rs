//! The DaemonSet's init-container work, as subcommands of the plugin binary (our image has no
//! shell and no `cp`): `flannel install-plugin DEST` puts this binary at DEST (upstream: `cp -f
//! /flannel /opt/cni/bin/flannel`), `flannel install-conf SRC DEST` installs the CNI config
//! (upstream: `install-conf`, or `cp -f` in older manifests).
//!
//! Both write a temporary file beside DEST and rename it over DEST, so the kubelet (and a pod
//! being created) never reads a half-written plugin or config. DEST keeps its mode when it
//! exists; a new one gets SRC's. A config that is not JSON is refused and the installed one is
//! kept: a broken file in `/etc/cni/net.d` would stop every pod on the node from starting.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What went wrong, with the file it happened to.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid CNI config (not installed): {msg}")]
    BadConfig { path: PathBuf, msg: String },
    #[error("usage: flannel install-plugin DEST | flannel install-conf SRC DEST")]
    Usage,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `install-plugin` or `install-conf` from the command line (after the subcommand name).
pub fn run(sub: &str, args: &[String]) -> Result<String, InstallError> {
    match (sub, args) {
        ("install-plugin", [dst]) => {
            let exe = Path::new("/proc/self/exe");
            let bytes = fs::read(exe).map_err(io_at(exe))?;
            // Always executable, whatever mode an older file there had.
            install_bytes(&bytes, Mode::Exactly(0o755), Path::new(dst))?;
            Ok(format!("installed the flannel CNI plugin at {dst}"))
        }
        ("install-conf", [src, dst]) => {
            let src = Path::new(src);
            let bytes = fs::read(src).map_err(io_at(src))?;
            check_config(src, &bytes)?;
            let mode = fs::metadata(src).map_err(io_at(src))?.permissions().mode() & 0o7777;
            install_bytes(&bytes, Mode::KeepOr(mode), Path::new(dst))?;
            Ok(format!("installed {} as {}", src.display(), dst))
        }
        _ => Err(InstallError::Usage),
    }
}

/// A CNI config or conflist is a JSON object with a name, and a type or a plugins list.
fn check_config(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    let bad = |msg: String| InstallError::BadConfig {
        path: path.to_path_buf(),
        msg,
    };
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    if !obj.get("name").is_some_and(|n| n.is_string()) {
        return Err(bad("no \"name\"".into()));
    }
    if !obj.get("type").is_some_and(|t| t.is_string())
        && !obj.get("plugins").is_some_and(|p| p.is_array())
    {
        return Err(bad("neither \"type\" nor a \"plugins\" list".into()));
    }
    Ok(())
}

/// The mode an installed file gets.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// The destination's mode if it exists, else this one (as `cp -f` does).
    KeepOr(u32),
    /// This one.
    Exactly(u32),
}

/// Writes `bytes` to `dst` atomically: a temporary file in the same directory, synced, renamed.
pub fn install_bytes(bytes: &[u8], mode: Mode, dst: &Path) -> Result<(), InstallError> {
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dst.file_name().ok_or(InstallError::Usage)?;
    let mode = match (mode, fs::metadata(dst)) {
        (Mode::KeepOr(_), Ok(m)) => m.permissions().mode() & 0o7777,
        (Mode::KeepOr(m) | Mode::Exactly(m), _) => m,
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        f.write_all(bytes).map_err(io_at(&tmp))?;
        // The umask applied at create; the mode asked for is set exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, dst).map_err(io_at(dst))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flannel-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn conf_is_installed_whole_keeping_the_destination_mode() {
        let d = tmpdir("conf");
        let src = d.join("cni-conf.json");
        let dst = d.join("10-flannel.conflist");
        fs::write(&src, r#"{"name":"cbr0","plugins":[{"type":"flannel"}]}"#).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let args = [src.display().to_string(), dst.display().to_string()];
        run("install-conf", &args).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // An existing destination keeps its mode; no temporary file stays behind.
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&src, r#"{"name":"cbr1","type":"flannel"}"#).unwrap();
        run("install-conf", &args).unwrap();
        assert!(fs::read_to_string(&dst).unwrap().contains("cbr1"));
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(&d).unwrap().count(), 2);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_broken_conf_is_refused_and_the_installed_one_kept() {
        let d = tmpdir("bad");
        let src = d.join("cni-conf.json");
        let dst = d.join("10-flannel.conflist");
        fs::write(&dst, r#"{"name":"cbr0","type":"flannel"}"#).unwrap();
        for (text, want) in [
            ("{\"name\":", "EOF while parsing"),
            ("[1]", "not a JSON object"),
            (r#"{"type":"flannel"}"#, "no \"name\""),
            (r#"{"name":"x"}"#, "neither \"type\" nor a \"plugins\" list"),
        ] {
            fs::write(&src, text).unwrap();
            let e = run(
                "install-conf",
                &[src.display().to_string(), dst.display().to_string()],
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(&src.display().to_string()) && e.contains(want),
                "{e}"
            );
            assert!(fs::read_to_string(&dst).unwrap().contains("cbr0"));
        }
        let e = run(
            "install-conf",
            &[
                d.join("nope").display().to_string(),
                dst.display().to_string(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains("No such file"), "{e}");
        assert!(matches!(run("install-conf", &[]), Err(InstallError::Usage)));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_destination_directory_is_named_and_leaves_nothing() {
        let d = tmpdir("nodir");
        let dst = d.join("missing/flannel");
        let e = install_bytes(b"x", Mode::Exactly(0o755), &dst)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}

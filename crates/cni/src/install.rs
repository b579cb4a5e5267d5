//! The DaemonSet's init-container work, as subcommands of the plugin binary (our image has no
//! shell and no `cp`): `flannel install-plugin DEST` puts this binary at DEST (upstream: `cp -f
//! /flannel /opt/cni/bin/flannel`), `flannel install-conf SRC DEST` installs the CNI config
//! (upstream: `install-conf`, or `cp -f` in older manifests).
//!
//! Both write a temporary file beside DEST and rename it over DEST, so the kubelet (and a pod
//! being created) never reads a half-written plugin or config. DEST keeps its mode when it
//! exists; a new one gets SRC's. A DEST that is a symlink is written through, as `cp -f` does
//! (the link stays, its target gets the new content). A config that is not JSON is refused and
//! the installed one is kept: a broken file in `/etc/cni/net.d` would stop every pod on the
//! node from starting. The temporary file's name is unique (in a container every run is PID
//! 1); leftovers of an interrupted run are removed.

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

/// How many symlinks are followed at most (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// A temporary file of ours older than this is a leftover of an interrupted run.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The file a write to `dst` lands in: `dst` itself, or what its symlinks point at.
fn through_links(dst: &Path) -> Result<PathBuf, InstallError> {
    let mut p = dst.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p).map_err(io_at(&p))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(InstallError::Io {
        path: dst.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::ELOOP),
    })
}

/// A name no other run uses: the PID (1 in every container) is not enough.
fn unique_suffix() -> String {
    let mut r = [0u8; 8];
    // SAFETY: getrandom(2) writes at most 8 bytes into `r`.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    let random = if n == 8 {
        u64::from_le_bytes(r)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    format!("{}-{random:016x}", std::process::id())
}

/// Removes temporary files of `name` in `dir` left by runs that never finished.
fn remove_leftovers(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= LEFTOVER_AGE);
        if old && e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `dst` atomically: a temporary file in the same directory, synced, renamed.
pub fn install_bytes(bytes: &[u8], mode: Mode, dst: &Path) -> Result<(), InstallError> {
    let dst = &through_links(dst)?;
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dst
        .file_name()
        .ok_or(InstallError::Usage)?
        .to_string_lossy()
        .into_owned();
    let mode = match (mode, fs::metadata(dst)) {
        (Mode::KeepOr(_), Ok(m)) => m.permissions().mode() & 0o7777,
        (Mode::KeepOr(m) | Mode::Exactly(m), _) => m,
    };
    remove_leftovers(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
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

    /// `cp -f` writes through a symlink at DEST; so do we (it used to be replaced by a plain
    /// file). A dangling link gets its target created.
    #[test]
    fn a_symlink_at_the_destination_is_written_through() {
        let d = tmpdir("link");
        let src = d.join("cni-conf.json");
        let real = d.join("real.conflist");
        let dst = d.join("10-flannel.conflist");
        fs::write(&src, r#"{"name":"cbr0","type":"flannel"}"#).unwrap();
        fs::write(&real, r#"{"name":"old","type":"flannel"}"#).unwrap();
        std::os::unix::fs::symlink("real.conflist", &dst).unwrap();
        let args = [src.display().to_string(), dst.display().to_string()];
        run("install-conf", &args).unwrap();
        assert!(fs::symlink_metadata(&dst).unwrap().file_type().is_symlink());
        assert!(fs::read_to_string(&real).unwrap().contains("cbr0"));
        fs::remove_file(&real).unwrap();
        run("install-conf", &args).unwrap();
        assert!(
            fs::read_to_string(&real).unwrap().contains("cbr0"),
            "dangling link"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// In a container every run is PID 1: a temporary file left by an interrupted run made
    /// the next one fail with `File exists`. It goes unnoticed now, and once old, is removed.
    #[test]
    fn a_leftover_temporary_file_neither_blocks_nor_stays() {
        let d = tmpdir("left");
        let src = d.join("cni-conf.json");
        let dst = d.join("10-flannel.conflist");
        fs::write(&src, r#"{"name":"cbr0","type":"flannel"}"#).unwrap();
        let pid_name = d.join(format!(".10-flannel.conflist.tmp-{}", std::process::id()));
        fs::write(&pid_name, "half").unwrap();
        let old = d.join(".10-flannel.conflist.tmp-1-0123456789abcdef");
        fs::write(&old, "half").unwrap();
        // Two minutes ago.
        let path = std::ffi::CString::new(old.display().to_string()).unwrap();
        let past = libc::timespec {
            tv_sec: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 120) as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: utimensat(2) on a path we own, with two valid timespecs.
        assert_eq!(
            // SAFETY: utimensat(2) reads a NUL-terminated path and two timespecs we own.
            unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [past, past].as_ptr(), 0) },
            0
        );
        let args = [src.display().to_string(), dst.display().to_string()];
        run("install-conf", &args).unwrap();
        assert!(fs::read_to_string(&dst).unwrap().contains("cbr0"));
        assert!(!old.exists(), "an old leftover is removed");
        assert!(pid_name.exists(), "a fresh one may be another run's");
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

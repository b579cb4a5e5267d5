//! A lab node's own view of the file system. Every lab node shares the machine's files, but a
//! DaemonSet pod sees its node's `/run/flannel`, `/etc/cni/net.d`, `/opt/cni/bin`, its
//! ConfigMap at `/etc/kube-flannel/` and its service-account token, and the kubelet's CNI calls
//! see the node's `/run/flannel` and `/var/lib/cni`. So each such process runs in a private
//! mount namespace with those paths bind-mounted from `<state>/<node>/`: nothing is written
//! where the host's own files are.
//!
//! A bind mount needs its mount point to exist. Missing ones are made as empty directories (or
//! an empty file) before the first mount and recorded, so `down` removes them again; the host's
//! existing files are never covered outside the node's own processes.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `src` (under the lab's state directory) appears at `dst` for the node's processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
}

/// Where `path` (as the node's processes see it) really is.
pub fn host_path(binds: &[Bind], path: &Path) -> PathBuf {
    // The longest mount point that contains the path wins, as in the kernel's mount table.
    binds
        .iter()
        .filter_map(|b| path.strip_prefix(&b.dst).ok().map(|rest| (b, rest)))
        .max_by_key(|(b, _)| b.dst.as_os_str().len())
        .map(|(b, rest)| {
            if rest.as_os_str().is_empty() {
                b.src.clone()
            } else {
                b.src.join(rest)
            }
        })
        .unwrap_or_else(|| path.to_path_buf())
}

/// Mount points labs made, and the labs (state directories) using each: the last lab to go
/// removes it. Read and written under [`lock`].
const REGISTRY: &str = "/run/flannel-lab-mounts.json";

type Registry = std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<PathBuf>>;

fn load_registry() -> Registry {
    std::fs::read_to_string(REGISTRY)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn save_registry(r: &Registry) {
    if r.is_empty() {
        let _ = std::fs::remove_file(REGISTRY);
    } else if let Ok(t) = serde_json::to_string(r) {
        let _ = std::fs::write(REGISTRY, t);
    }
}

/// Records `owner` (a lab's state directory) as a user of the lab-made mount points `made`.
/// Call with [`lock`] held.
pub fn register(owner: &Path, made: &[PathBuf]) {
    let mut r = load_registry();
    for p in made {
        r.entry(p.clone()).or_default().insert(owner.to_path_buf());
    }
    save_registry(&r);
}

/// Makes the mount points that do not exist yet (like the source: a file or a directory) and
/// appends them to `made`, outermost first, for [`remove_mount_points`] (also when it fails
/// half-way); so are existing ones another lab made. Call with [`lock`] held.
pub fn make_mount_points(binds: &[Bind], made: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let registry = load_registry();
    for b in binds {
        if b.dst.symlink_metadata().is_ok() {
            // Made by another lab that is still up: ours too now, the last one removes it.
            for p in b.dst.ancestors() {
                if registry.contains_key(p) && !made.iter().any(|m| m == p) {
                    made.push(p.to_path_buf());
                }
            }
            continue;
        }
        // Every missing ancestor is ours too.
        let mut missing: Vec<&Path> = b
            .dst
            .ancestors()
            .skip(1)
            .take_while(|a| a.symlink_metadata().is_err())
            .collect();
        missing.reverse();
        // Another lab may make the same one at the same moment: then it is that lab's.
        let ours = |r: std::io::Result<()>, p: &Path| match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("creating mount point {}", p.display())),
        };
        for d in missing {
            if ours(std::fs::create_dir(d), d)? {
                made.push(d.to_path_buf());
            }
        }
        let created = if b.src.is_dir() {
            std::fs::create_dir(&b.dst)
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&b.dst)
                .map(|_| ())
        };
        if ours(created, &b.dst)? {
            made.push(b.dst.clone());
        }
    }
    Ok(())
}

/// Held while a lab makes and uses mount points (its whole `up`) and while `down` removes them:
/// between two steps of another lab's `up` (one init container ended, the next not started)
/// nothing holds a mount point, and `down` must not take it away then.
pub struct MountLock {
    /// The lock lives as long as this file is open.
    _file: std::fs::File,
}

const LOCK_FILE: &str = "/run/flannel-lab-mounts.lock";

pub fn lock() -> anyhow::Result<MountLock> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("opening {LOCK_FILE}"))?;
    // SAFETY: flock(2) on a file descriptor we own; released when the file is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("locking {LOCK_FILE}"));
    }
    Ok(MountLock { _file: f })
}

/// Mount points of every process's mount namespace. Another lab's node processes may use a
/// mount point this lab made; removing it would detach their mounts (Linux allows rmdir of a
/// mount point in another namespace), so those stay.
fn mount_points_in_use() -> std::collections::HashSet<PathBuf> {
    let mut used = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return used;
    };
    for p in procs.flatten() {
        let Ok(text) = std::fs::read_to_string(p.path().join("mountinfo")) else {
            continue;
        };
        // Field 5 of each line is the mount point (spaces escaped as \040).
        used.extend(
            text.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(|m| PathBuf::from(m.replace("\\040", " "))),
        );
    }
    used
}

/// Lab `owner` no longer uses the mount points in `made`: those no other lab uses are removed,
/// innermost first, if still empty and not in use by any process.
pub fn remove_mount_points(owner: &Path, made: &[PathBuf]) {
    let _lock = lock();
    let mut registry = load_registry();
    // Labs whose state is gone (killed without `down`) use nothing any more.
    for users in registry.values_mut() {
        users.retain(|u| u != owner && u.exists());
    }
    let used = mount_points_in_use();
    // Ours, and any that no lab uses any more.
    let orphans: Vec<PathBuf> = registry
        .iter()
        .filter(|(_, u)| u.is_empty())
        .map(|(p, _)| p.clone())
        .collect();
    let mut ordered: Vec<&PathBuf> = made.iter().chain(&orphans).collect();
    // Innermost first, whatever order they were made in.
    ordered.sort_by(|a, b| {
        (std::cmp::Reverse(a.components().count()), a)
            .cmp(&(std::cmp::Reverse(b.components().count()), b))
    });
    ordered.dedup();
    for p in ordered {
        if registry.get(p).is_some_and(|u| !u.is_empty()) || used.contains(p) {
            continue;
        }
        registry.remove(p);
        match p.symlink_metadata() {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir(p);
            }
            Ok(m) if m.len() == 0 => {
                let _ = std::fs::remove_file(p);
            }
            _ => {}
        }
    }
    save_registry(&registry);
}

/// Makes `cmd` run in a private mount namespace with `binds` in place (before it execs, so
/// `ip netns exec` and what it starts inherit them).
pub fn apply(cmd: &mut Command, binds: &[Bind]) -> anyhow::Result<()> {
    if binds.is_empty() {
        return Ok(());
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .with_context(|| format!("{} has a NUL byte", p.display()))
    };
    // Everything the child needs is built here: after fork only system calls are made.
    let pairs: Vec<(CString, CString)> = binds
        .iter()
        .map(|b| Ok((c(&b.src)?, c(&b.dst)?)))
        .collect::<anyhow::Result<_>>()?;
    let root = c(Path::new("/"))?;
    // SAFETY: the closure runs between fork and exec and only calls unshare(2) and mount(2)
    // with C strings made before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Our binds must not propagate back to the host's mount namespace.
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (src, dst) in &pairs {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str, dst: &str) -> Bind {
        Bind {
            src: src.into(),
            dst: dst.into(),
        }
    }

    #[test]
    fn paths_resolve_through_the_innermost_bind() {
        let binds = [
            b("/s/n1/host/run/flannel", "/run/flannel"),
            b("/s/n1/host/opt/cni/bin", "/opt/cni/bin"),
            b("/s/n1/cm", "/etc/kube-flannel"),
            b("/s/n1/cm-inner", "/etc/kube-flannel/inner"),
        ];
        assert_eq!(
            host_path(&binds, Path::new("/opt/cni/bin/flannel")),
            Path::new("/s/n1/host/opt/cni/bin/flannel")
        );
        assert_eq!(
            host_path(&binds, Path::new("/run/flannel")),
            Path::new("/s/n1/host/run/flannel")
        );
        assert_eq!(
            host_path(&binds, Path::new("/etc/kube-flannel/inner/x")),
            Path::new("/s/n1/cm-inner/x")
        );
        // A sibling with a common string prefix is not inside.
        assert_eq!(
            host_path(&binds, Path::new("/run/flannel2/x")),
            Path::new("/run/flannel2/x")
        );
        assert_eq!(
            host_path(&binds, Path::new("/usr/lib/cni/bridge")),
            Path::new("/usr/lib/cni/bridge")
        );
    }

    #[test]
    fn mount_points_made_are_removed_again_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("nodefs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("src/dir")).unwrap();
        std::fs::write(root.join("src/file"), "").unwrap();
        std::fs::create_dir_all(root.join("host/existing")).unwrap();
        let binds = [
            Bind {
                src: root.join("src/dir"),
                dst: root.join("host/a/b/dir"),
            },
            Bind {
                src: root.join("src/file"),
                dst: root.join("host/a/lock"),
            },
            Bind {
                src: root.join("src/dir"),
                dst: root.join("host/existing"),
            },
        ];
        let mut made = Vec::new();
        make_mount_points(&binds, &mut made).unwrap();
        assert_eq!(
            made,
            vec![
                root.join("host/a"),
                root.join("host/a/b"),
                root.join("host/a/b/dir"),
                root.join("host/a/lock")
            ]
        );
        assert!(root.join("host/a/lock").is_file());
        remove_mount_points(&root, &made);
        assert!(!root.join("host/a").exists());
        assert!(root.join("host/existing").is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

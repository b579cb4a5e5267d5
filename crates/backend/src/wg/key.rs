//! The node's WireGuard private key: `/run/flannel/wgkey` (or `$WIREGUARD_KEY_FILE`), base64 of
//! 32 bytes with no newline, mode 0400, created from the kernel's random source on first start
//! and kept across restarts (so peers keep our public key), as upstream does.

use crate::wg::config::{decode_key, encode_key, Key, KEY_FILE, KEY_FILE_ENV};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tracing::warn;

/// The key file this process uses.
pub fn key_path() -> PathBuf {
    std::env::var_os(KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KEY_FILE))
}

/// 32 bytes from getrandom(2), clamped as a Curve25519 private key (as `wg genkey` writes it).
fn generate() -> Result<Key, String> {
    let mut k = [0u8; 32];
    let mut got = 0;
    while got < k.len() {
        // SAFETY: getrandom(2) writes at most the given length into our buffer.
        let n = unsafe {
            libc::getrandom(k[got..].as_mut_ptr() as *mut libc::c_void, k.len() - got, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("getrandom: {e}"));
        }
        got += n as usize;
    }
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    Ok(k)
}

/// Reads the private key at `path`, or creates it (parent directories 0755, the file 0400).
/// Whether it was created is returned beside it. A file that exists but holds no key is an
/// error naming the file: replacing it would change our identity under our peers. Only an
/// empty file, which is what a crash (or a full disk) while writing a key used to leave, is
/// replaced.
pub fn load_or_create(path: &Path) -> Result<(Key, bool), String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => {
            warn!(
                file = %path.display(),
                "the WireGuard key file is empty (left by a crash or a full disk while it was written); writing a new key"
            );
            create(path).map(|k| (k, true))
        }
        Ok(text) => {
            if let Some(mode) = loose_mode(path) {
                warn!(
                    file = %path.display(),
                    "the WireGuard private key file has mode {mode:o}: others can read it; chmod 0400 it"
                );
            }
            decode_key(&text)
                .map(|k| (k, false))
                .map_err(|e| format!("WireGuard private key file {}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map(|k| (k, true)),
        Err(e) => Err(format!(
            "reading WireGuard key file {}: {e}",
            path.display()
        )),
    }
}

/// The file's permission bits when group or others may read or write it.
pub fn loose_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Writes a new key to `path` whole or not at all: into a file of its own in the same
/// directory (mode 0400), synced, then renamed over `path`. A failure (ENOSPC, EIO) leaves no
/// file behind, so the next start simply tries again.
fn create(path: &Path) -> Result<Key, String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let key = generate()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wgkey".into());
    let nonce = u64::from_le_bytes(generate()?[..8].try_into().unwrap_or_default());
    let tmp = dir.join(format!(".{name}.{nonce:016x}.tmp"));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        f.write_all(encode_key(&key).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "writing WireGuard key file {}: {e}",
            path.display()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_0400_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let (k1, created) = load_or_create(&path).unwrap();
        assert!(created);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44, "base64 of 32 bytes, no newline: {text:?}");
        assert_eq!(decode_key(&text).unwrap(), k1);
        let (k2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        let (k3, _) = load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(k1, k3, "two fresh keys differ");
    }

    #[test]
    fn a_file_without_a_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, "not a key").unwrap();
        let e = load_or_create(&path).unwrap_err();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("base64"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }

    /// What a crash or a full disk left before keys were written whole: an empty file, which
    /// is replaced (any other content is refused, above). A readable key is named as such.
    #[test]
    fn an_empty_key_file_is_replaced_and_a_readable_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let (k, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            decode_key(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            k
        );
        assert_eq!(loose_mode(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(loose_mode(&path), Some(0o644));
        assert_eq!(load_or_create(&path).unwrap(), (k, false), "still read");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("wgkey")],
            "no temporary file left"
        );
    }

    /// The probe: the key file on a full filesystem. The start fails naming ENOSPC,
    /// and leaves nothing behind (it used to leave a 0-byte key that failed every later
    /// start); with room again the next start writes the key. In a tmpfs of one page, mounted
    /// in a mount namespace of this test's thread only.
    #[test]
    fn a_full_filesystem_leaves_no_key_file_behind() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("FLANNEL_TESTS_REQUIRE_ROOT").is_none(),
                "needs root (mounts a tmpfs) and FLANNEL_TESTS_REQUIRE_ROOT is set"
            );
            eprintln!("skipped: needs root (mounts a tmpfs in a mount namespace of its own)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().to_path_buf();
        std::thread::spawn(move || {
            use std::ffi::CString;
            let c = |s: &str| CString::new(s).unwrap();
            let m = c(mnt.to_str().unwrap());
            // SAFETY: unshare(2) and mount(2) on this thread's own (new) mount namespace;
            // the strings outlive the calls.
            unsafe {
                assert_eq!(
                    libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS),
                    0,
                    "unshare"
                );
                assert_eq!(
                    libc::mount(
                        std::ptr::null(),
                        c("/").as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null()
                    ),
                    0
                );
                assert_eq!(
                    libc::mount(
                        c("tmpfs").as_ptr(),
                        m.as_ptr(),
                        c("tmpfs").as_ptr(),
                        0,
                        c("size=4k").as_ptr().cast()
                    ),
                    0,
                    "mount tmpfs: {}",
                    std::io::Error::last_os_error()
                );
            }
            // Fill it.
            let fill = mnt.join("fill");
            let mut f = std::fs::File::create(&fill).unwrap();
            let _ = f.write_all(&[0u8; 65536]);
            drop(f);
            let path = mnt.join("wgkey");
            let e = load_or_create(&path).unwrap_err();
            assert!(
                e.contains("No space left on device") && e.contains("wgkey"),
                "{e}"
            );
            let names: Vec<_> = std::fs::read_dir(&mnt)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                names,
                vec![std::ffi::OsString::from("fill")],
                "nothing left behind"
            );
            std::fs::remove_file(&fill).unwrap();
            let (_, created) = load_or_create(&path).expect("with room again");
            assert!(created);
            let m2 = c(mnt.to_str().unwrap());
            // SAFETY: umount(2) of the tmpfs this thread mounted.
            unsafe { libc::umount(m2.as_ptr()) };
        })
        .join()
        .expect("the test thread");
    }
}

//! The node's WireGuard private key: `/run/flannel/wgkey` (or `$WIREGUARD_KEY_FILE`), base64 of
//! 32 bytes with no newline, mode 0400, created from the kernel's random source on first start
//! and kept across restarts (so peers keep our public key), as upstream does.

use flannel_core::wireguard::{decode_key, encode_key, Key, KEY_FILE, KEY_FILE_ENV};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
/// error naming the file: replacing it would change our identity under our peers.
pub fn load_or_create(path: &Path) -> Result<(Key, bool), String> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_key(&text)
            .map(|k| (k, false))
            .map_err(|e| format!("WireGuard private key file {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let key = generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(path)
                .map_err(|e| format!("creating WireGuard key file {}: {e}", path.display()))?;
            f.write_all(encode_key(&key).as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("writing WireGuard key file {}: {e}", path.display()))?;
            Ok((key, true))
        }
        Err(e) => Err(format!(
            "reading WireGuard key file {}: {e}",
            path.display()
        )),
    }
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
}

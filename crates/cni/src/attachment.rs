//! The stored delegate config of one attachment, `<dataDir>/<ContainerID>` (upstream's file,
//! same bytes): written before the delegate's ADD so that DEL can undo whatever it managed to
//! do, replayed as the delegate's DEL by DEL and GC, and forgotten only when nothing can act on
//! it any more (it is unreadable, or names a plugin that is gone).

use crate::error::{code, CniError};
use crate::invoke;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::new(code::IO_FAILURE, format!("{what}: {e}"))
}

/// Writes the config with mode 0600 in a 0700 directory, synced. Never over an existing file:
/// that is another attachment's, and DEL needs it as it is.
pub fn save_new(path: &Path, data: &[u8]) -> Result<(), CniError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => already_attached(path),
            _ => io_err(format!("writing {}", path.display()))(e),
        })?;
    f.write_all(data)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.sync_all()
        .map_err(io_err(format!("syncing {}", path.display())))
}

/// The error for an ADD of a container that already has a stored config.
pub fn already_attached(path: &Path) -> CniError {
    let id = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    CniError::new(
        code::INVALID_ENV,
        format!(
            "CNI_CONTAINERID {id} is already attached (stored config {}): DEL it before adding it again",
            path.display()
        ),
    )
}

/// Removes a stored config nothing can act on, saying so on stderr (the runtime's log).
fn forget(path: &Path, why: &str) -> Result<(), CniError> {
    eprintln!(
        "flannel: forgetting stored config {}: {why}; whatever it set up cannot be undone by flannel",
        path.display()
    );
    std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))
}

/// Replays the delegate's DEL for the config stored at `path` (with `vars` replacing CNI
/// variables), then removes it. Nothing stored is success. A failing delegate DEL is returned
/// (the config stays for the runtime's retry), except when no retry could ever succeed.
pub fn undo(path: &Path, cni_path: &str, vars: &[(&str, &str)]) -> Result<(), CniError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        // Nothing stored: ADD never ran, or DEL already did. DEL is idempotent.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    let stored: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return forget(path, &format!("it is not valid JSON ({e})")),
    };
    let plugin = stored
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    if let Err(e) = invoke::find_plugin(cni_path, &plugin) {
        return forget(path, &e.msg);
    }
    invoke::run_with_env(cni_path, &plugin, "DEL", &bytes, vars)?;
    std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))
}

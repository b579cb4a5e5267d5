//! Looking at the pod's network namespace before touching it: is `CNI_NETNS` one at all, and
//! does the interface the runtime asks for already exist there (another attachment's)?

use crate::error::{code, CniError};
use std::os::fd::AsRawFd;

/// `statfs` magic of nsfs, where namespace files live; older kernels used procfs.
const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Checks that `path` is a network namespace file, as the reference `ns` package does.
pub fn check(path: &str) -> Result<std::fs::File, CniError> {
    let bad = |why: String| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {path} is not a network namespace: {why}"),
        )
    };
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs(2) fills the struct we own, on an fd we hold open.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    let magic = st.f_type as i64;
    if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
        return Err(bad(format!(
            "its file system is not nsfs (magic {magic:#x})"
        )));
    }
    Ok(f)
}

/// Whether link `ifname` exists inside the namespace at `path`. Looked up from a thread of its
/// own that enters the namespace, so this process stays in the node's namespace (the
/// delegates it runs must).
pub fn has_link(path: &str, ifname: &str) -> Result<bool, CniError> {
    let ns = check(path)?;
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| CniError::new(code::INVALID_ENV, "invalid interface name"))?;
    let path = path.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on this thread only, with a namespace fd we hold open.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "entering network namespace {path}: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        // SAFETY: if_nametoindex(3) reads a NUL-terminated string we own; its socket is
        // made in this thread's namespace.
        Ok(unsafe { libc::if_nametoindex(name.as_ptr()) } != 0)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(CniError::new(
            code::IO_FAILURE,
            "namespace lookup thread failed",
        ))
    })
}

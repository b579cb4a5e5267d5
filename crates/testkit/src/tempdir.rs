//! A fresh temporary directory, removed on drop (also when the test fails).

use std::path::{Path, PathBuf};

pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Panics when the directory cannot be made: a test cannot go on without it.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(crate::unique(&format!("flannel-test-{tag}-")));
        if let Err(e) = std::fs::create_dir_all(&p) {
            panic!("creating {}: {e}", p.display());
        }
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! The policy table in the kernel, behind a trait so the enforcer is tested with a fake.

use flannel_net::nftables;
use flannel_policy::ruleset::{Observed, Ruleset};
use flannel_policy::{FAMILY, TABLE};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Nft(#[from] nftables::NftError),
    #[error("reading table {FAMILY} {TABLE}: {0}")]
    Listing(String),
}

pub trait PolicyTable: Send + Sync + 'static {
    /// Makes the kernel's table `want`: reads it, and applies the difference as one
    /// transaction. Returns what it applied (`None`: the table was already right).
    fn converge(&self, want: &Ruleset) -> Result<Option<String>, TableError>;
    /// Deletes the table; whether there was one.
    fn remove(&self) -> Result<bool, TableError>;
}

/// The real table, through `nft`.
pub struct NftPolicyTable;

impl NftPolicyTable {
    fn read() -> Result<Option<Observed>, TableError> {
        match nftables::list_table_json(FAMILY, TABLE)? {
            None => Ok(None),
            Some(text) => Observed::from_json(&text)
                .map(Some)
                .map_err(TableError::Listing),
        }
    }
}

impl PolicyTable for NftPolicyTable {
    fn converge(&self, want: &Ruleset) -> Result<Option<String>, TableError> {
        let Some(script) = want.diff(Self::read()?.as_ref()) else {
            return Ok(None);
        };
        match nftables::apply(&script) {
            Ok(()) => Ok(Some(script)),
            Err(e) => {
                // The table changed under us between the read and the write, or holds
                // something we do not read back: replace all of it, still atomically.
                warn!("the policy table's difference did not apply ({e}); replacing the table in one transaction");
                let full = format!(
                    "add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{}",
                    want.script()
                );
                nftables::apply(&full)?;
                Ok(Some(full))
            }
        }
    }

    fn remove(&self) -> Result<bool, TableError> {
        Ok(nftables::delete_table(FAMILY, TABLE)?)
    }
}

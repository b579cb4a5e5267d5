//! CNI error results (spec "Error" section): `{"cniVersion","code","msg","details"}`.

use serde_json::json;

/// Well-known CNI error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific failures start at 100.
    pub const PLUGIN: u32 = 100;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
    /// Raw error JSON from a delegate, passed through unchanged.
    pub raw: Option<String>,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
            raw: None,
        }
    }

    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    pub fn to_json(&self, cni_version: &str) -> String {
        if let Some(r) = &self.raw {
            return r.clone();
        }
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v.to_string()
    }
}

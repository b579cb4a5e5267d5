//! Running a delegate plugin: found by type in `CNI_PATH`, same environment, config on stdin.

use crate::error::{code, CniError};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn find_plugin(cni_path: &str, plugin: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid delegate plugin type {plugin:?}"),
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::PLUGIN,
                format!("failed to find plugin {plugin:?} in path [{cni_path}]"),
            )
        })
}

/// Runs `plugin` with `CNI_COMMAND=command` and `config` on stdin; returns its stdout. A failing
/// delegate's own CNI error object is passed through.
pub fn run(
    cni_path: &str,
    plugin: &str,
    command: &str,
    config: &[u8],
) -> Result<Vec<u8>, CniError> {
    run_with_env(cni_path, plugin, command, config, &[])
}

/// Like [`run`], with some CNI variables replaced (GC acts for other containers).
pub fn run_with_env(
    cni_path: &str,
    plugin: &str,
    command: &str,
    config: &[u8],
    env: &[(&str, &str)],
) -> Result<Vec<u8>, CniError> {
    let bin = find_plugin(cni_path, plugin)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("running {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("writing config to {}: {e}", bin.display()),
            )
        })?;
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("waiting for {}: {e}", bin.display()),
        )
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("msg"))
        .and_then(|m| m.as_str())
    {
        Some(msg) => Err(CniError {
            code: parsed
                .as_ref()
                .and_then(|v| v["code"].as_u64())
                .unwrap_or(u64::from(code::PLUGIN)) as u32,
            msg: msg.to_string(),
            details: String::new(),
            raw: Some(text),
        }),
        None => Err(CniError::new(
            code::PLUGIN,
            format!(
                "delegate {plugin} {command} failed ({}): {text}",
                out.status
            ),
        )),
    }
}

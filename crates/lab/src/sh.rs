//! Running commands, with errors that say which command failed and what it printed.

use anyhow::{bail, Context};
use std::process::{Command, Stdio};

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs to completion; stdout on success, an error with stderr otherwise.
pub fn run(c: &mut Command) -> anyhow::Result<String> {
    let what = describe(c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `ip <args>`
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(&mut cmd("ip", args))
}

/// A command that runs inside network namespace `ns`.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]).args(args);
    c
}

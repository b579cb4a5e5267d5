//! `flannelctl doctor`: checks this node the way the tutorial walks it by hand, and for each
//! failure says what is wrong, why it breaks pods, and the command that fixes it.
//!
//! [`gather`] reads the facts (flanneld's state, sysctls, links, kernel entries, firewall,
//! subnet.env); [`checks`] judges them without side effects, so every check is tested as any
//! user.

pub mod checks;
pub mod from_node;
pub mod gather;

use serde::Serialize;

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Short name (`ip_forward`, `rp_filter`, `peers`, ...).
    pub check: &'static str,
    pub ok: bool,
    /// What is wrong, one line per problem (empty when ok).
    pub problems: Vec<String>,
    /// Why that breaks pods.
    pub why: String,
    /// A command that fixes it, when there is one.
    pub fix: Option<String>,
    /// Not judged: it needs what only a running flanneld knows (`why` says so).
    #[serde(default)]
    pub skipped: bool,
}

impl Verdict {
    pub fn pass(check: &'static str) -> Self {
        Verdict {
            check,
            ok: true,
            problems: Vec::new(),
            why: String::new(),
            fix: None,
            skipped: false,
        }
    }

    /// A check that cannot be judged without flanneld's state.
    pub fn skipped(check: &'static str, needs: &str) -> Self {
        Verdict {
            check,
            ok: true,
            problems: Vec::new(),
            why: format!("needs flanneld's state ({needs}); with flanneld down, `flannelctl doctor --state-file=F` judges it against a state saved earlier with `flannelctl state > F`"),
            fix: None,
            skipped: true,
        }
    }

    /// The verdict from the problems found and a fix command for each (run one after the other).
    pub fn judged(
        check: &'static str,
        problems: Vec<String>,
        why: &str,
        fixes: Vec<String>,
    ) -> Self {
        let fix = (!fixes.is_empty()).then(|| fixes.join(" && "));
        Self::fail(check, problems, why, fix)
    }

    pub fn fail(
        check: &'static str,
        problems: Vec<String>,
        why: &str,
        fix: Option<String>,
    ) -> Self {
        Verdict {
            check,
            ok: problems.is_empty(),
            problems,
            why: why.into(),
            fix,
            skipped: false,
        }
    }
}

/// The report an operator reads: a line per check, the failures explained.
pub fn render(v: &[Verdict]) -> String {
    let mut out = String::new();
    for c in v {
        let mark = match (c.skipped, c.ok) {
            (true, _) => "[skip]",
            (false, true) => "[ ok ]",
            (false, false) => "[FAIL]",
        };
        out.push_str(&format!("{mark} {}\n", c.check));
        if c.skipped {
            out.push_str(&format!("       {}\n", c.why));
            continue;
        }
        if c.ok {
            continue;
        }
        for p in &c.problems {
            out.push_str(&format!("       problem: {p}\n"));
        }
        out.push_str(&format!("       why: {}\n", c.why));
        if let Some(f) = &c.fix {
            let mut lines = f.lines();
            out.push_str(&format!("       fix: {}\n", lines.next().unwrap_or("")));
            for l in lines {
                out.push_str(&format!("            {l}\n"));
            }
        }
    }
    let failed = v.iter().filter(|c| !c.ok).count();
    let skipped = v.iter().filter(|c| c.skipped).count();
    if skipped > 0 {
        out.push_str(&format!(
            "{} checks, {} failed, {} skipped\n",
            v.len(),
            failed,
            skipped
        ));
    } else {
        out.push_str(&format!("{} checks, {} failed\n", v.len(), failed));
    }
    out
}

//! What a user checks when a daemon refuses to run, or when its datastore is away: written
//! once for every test that checks it.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A process that had to refuse: it exited with status 1 and its log says every one of
/// `says` (the problem and the place: a flag, a file, a key). Fails the test with the log.
pub fn expect_refusal(status: Option<ExitStatus>, log: &str, says: &[&str]) {
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "expected exit status 1 (a refusal), got {status:?}; log:\n{log}"
    );
    for s in says {
        assert!(log.contains(s), "the refusal should say {s:?}; log:\n{log}");
    }
}

/// Holds an outage for `hold`, calling `still_fine` every `every` (it asserts what must keep
/// working: pods talking, routes kept), then fails the test if any process in `pids` used
/// more than `max_share` of one core meanwhile (a daemon that spins while it waits). Returns
/// how long the outage lasted and the CPU seconds each process used in it.
pub fn assert_quiet_outage(
    pids: &[i32],
    hold: Duration,
    every: Duration,
    max_share: f64,
    mut still_fine: impl FnMut(Duration),
) -> (Duration, Vec<f64>) {
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|p| crate::procfs::cpu_seconds(*p))
        .collect();
    let started = Instant::now();
    while started.elapsed() < hold {
        still_fine(started.elapsed());
        std::thread::sleep(every);
    }
    let took = started.elapsed();
    let secs = took.as_secs_f64();
    let mut used = Vec::new();
    for (p, c0) in pids.iter().zip(&cpu0) {
        let u = crate::procfs::cpu_seconds(*p) - c0;
        assert!(
            u < max_share * secs,
            "process {p} used {u:.2} s of CPU in {secs:.0} s of outage (over {:.0} % of a core)",
            max_share * 100.0
        );
        used.push(u);
    }
    (took, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_refusal_is_exit_status_1_and_says_what_is_wrong() {
        let one = Command::new("sh").args(["-c", "exit 1"]).status().ok();
        expect_refusal(one, "bad --iface=eth9", &["--iface=eth9"]);
        let zero = Command::new("true").status().ok();
        assert!(std::panic::catch_unwind(|| expect_refusal(zero, "", &[])).is_err());
        assert!(std::panic::catch_unwind(|| expect_refusal(one, "vague", &["--iface"])).is_err());
    }

    #[test]
    fn an_idle_process_passes_a_short_outage_and_the_check_runs() {
        let mut sleeper = Command::new("sleep").arg("5").spawn().expect("sleep");
        let mut checks = 0;
        let (took, _) = assert_quiet_outage(
            &[sleeper.id() as i32],
            Duration::from_millis(300),
            Duration::from_millis(100),
            0.5,
            |_| checks += 1,
        );
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(checks >= 2 && took >= Duration::from_millis(300));
    }
}

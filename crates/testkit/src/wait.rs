//! Waiting for a condition by polling it: what every test and the lab do with processes they
//! start (a daemon ready, a route in, a file written).

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns true or `timeout` passes; the time it took.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why [`wait_for`] stopped waiting.
#[derive(Debug)]
pub enum WaitError<E> {
    /// The condition did not hold within the time given: "timed out after … waiting for …".
    TimedOut { what: String, after: Duration },
    /// The check itself failed (the process it watches exited, say).
    Failed(E),
}

impl<E: std::fmt::Display> std::fmt::Display for WaitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut { what, after } => {
                write!(f, "timed out after {after:?} waiting for {what}")
            }
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for WaitError<E> {}

/// Polls `ok` every 100 ms until it says true, fails, or `timeout` passes; `what` names the
/// wait in the error.
pub fn wait_for<E>(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> Result<bool, E>,
) -> Result<Duration, WaitError<E>> {
    let start = Instant::now();
    loop {
        if ok().map_err(WaitError::Failed)? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(WaitError::TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_the_condition_holds_fails_or_times_out() {
        let mut n = 0;
        assert!(eventually(Duration::from_secs(5), || {
            n += 1;
            n == 3
        })
        .is_some());
        assert!(eventually(Duration::from_millis(60), || false).is_none());
        let e = wait_for::<String>("the moon", Duration::from_millis(50), || Ok(false))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("timed out after 50ms waiting for the moon"),
            "{e}"
        );
        let e = wait_for("x", Duration::from_secs(5), || Err::<bool, _>("it exited"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "it exited");
    }
}

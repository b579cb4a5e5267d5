//! Exponential backoff: the pause before each retry doubles from `min` up to `max`, and a
//! success starts it over. The one backoff of the workspace (watch loops, accept loops).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The pause before this retry; the one after it is twice as long (up to `max`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// It worked: the next pause is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let seen: Vec<Duration> = (0..5).map(|_| b.next()).collect();
        assert_eq!(seen, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next(), ms(100));
    }
}

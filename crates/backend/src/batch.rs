//! Kernel writes go out pipelined: many requests in flight on the one netlink socket, so the
//! kernel never waits for us, yet a bounded number, so that 20000 writes never hold 20000
//! requests (each with its message and reply channel) in memory at once. Results are handled
//! as they arrive, never collected: 20000 `Result<(), NetError>` were 3 MB at a cold start.

use futures::{Future, StreamExt};

/// Requests in flight at once.
pub const WINDOW: usize = 128;

/// How many errors a batch keeps to show; the rest are counted.
const SHOWN: usize = 8;

/// Runs `futs` with at most [`WINDOW`] in flight, handing each result to `each` with its
/// position, in the order given.
pub async fn pipelined_each<I, F, T>(futs: I, mut each: impl FnMut(usize, T))
where
    I: IntoIterator<Item = F>,
    F: Future<Output = T>,
{
    let mut results = futures::stream::iter(futs).buffered(WINDOW).enumerate();
    while let Some((i, r)) = results.next().await {
        each(i, r);
    }
}

/// The writes of a batch that failed: how many, and the first few errors.
#[derive(Debug)]
pub struct Failures<E> {
    pub count: usize,
    pub first: Vec<E>,
}

impl<E> Default for Failures<E> {
    fn default() -> Self {
        Self {
            count: 0,
            first: Vec::new(),
        }
    }
}

impl<E> Failures<E> {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, e: E) {
        self.count += 1;
        if self.first.len() < SHOWN {
            self.first.push(e);
        }
    }

    pub fn absorb(&mut self, other: Self) {
        self.count += other.count - other.first.len();
        for e in other.first {
            self.push(e);
        }
    }
}

/// Runs `futs` pipelined; only their failures are kept.
pub async fn pipelined_failures<I, F, E>(futs: I) -> Failures<E>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<(), E>>,
{
    let mut failures = Failures::default();
    pipelined_each(futs, |_, r| {
        if let Err(e) = r {
            failures.push(e);
        }
    })
    .await;
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_come_in_order_and_only_the_first_errors_are_kept() {
        let mut seen = Vec::new();
        pipelined_each((0..300).map(|i| async move { i * 2 }), |i, v| {
            seen.push((i, v))
        })
        .await;
        assert_eq!(seen, (0..300).map(|i| (i, i * 2)).collect::<Vec<_>>());

        let f = pipelined_failures((0..100).map(|i| async move {
            if i % 10 == 3 {
                Err(i)
            } else {
                Ok(())
            }
        }))
        .await;
        assert_eq!(f.count, 10);
        assert_eq!(f.first, vec![3, 13, 23, 33, 43, 53, 63, 73]);
        let mut all = Failures::default();
        all.push(-1);
        all.absorb(f);
        assert_eq!(all.count, 11);
        assert_eq!(all.first.len(), SHOWN);
    }
}

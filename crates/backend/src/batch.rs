//! Kernel writes go out pipelined: many requests in flight on the one netlink socket, so the
//! kernel never waits for us, yet a bounded number, so that 20000 writes never hold 20000
//! requests (each with its message and reply channel) in memory at once.

use futures::{Future, StreamExt};

/// Requests in flight at once.
pub const WINDOW: usize = 128;

/// Runs `futs` with at most [`WINDOW`] in flight; results in the order given.
pub async fn pipelined<I, F, T>(futs: I) -> Vec<T>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = T>,
{
    futures::stream::iter(futs).buffered(WINDOW).collect().await
}

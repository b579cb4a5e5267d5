//! SIGTERM and SIGINT, listened for from the first moment to the last. Once a tokio listener
//! has existed, the default action (exit) is gone for the life of the process, and a signal
//! that arrives while no listener exists is lost: so one pair of listeners is made before
//! anything else and handed from the startup waits to the daemon loop.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    pub fn listen() -> std::io::Result<Self> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT (one that came earlier is returned at once) and
    /// names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

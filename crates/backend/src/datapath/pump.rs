//! The worker loop of the userspace data path, one per TUN queue, on a thread of its own:
//! poll the TUN queue, the UDP socket and (optionally) a waker; take control messages (a new
//! peer table, stop); run the encapsulation's periodic work; read up to a batch of packets
//! from the TUN and hand each to the encapsulation's outbound side; receive datagram batches
//! and hand each to its inbound side. The encapsulation (plain IP in UDP, WireGuard) owns its
//! buffers (allocated once) and its packet surgery; the loop is the same for both.

use super::counters::{inc, Counters};
use super::sock::{Received, RecvBatch, Sock};
use super::vnet;
use super::wake::Waker;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// How many TUN reads or datagram batches a worker handles before polling again.
const BATCH: usize = 64;
/// Datagrams per receive call.
pub const RECV_BATCH: usize = 32;

/// From the control side to a worker.
pub enum Ctl<T> {
    /// A new peer table.
    Table(Arc<T>),
    Stop,
}

/// What a worker's packets go through: the device and socket it writes to, its counters.
pub struct Io<'a> {
    pub tun: &'a OwnedFd,
    pub sock: &'a Sock,
    pub counters: &'a Counters,
}

/// One encapsulation of the data path.
pub trait Encap: Send {
    /// The peer table the control side sends.
    type Table: Default + Send + Sync;

    /// How long a worker sleeps in poll(2) without traffic, in milliseconds (the pace of the
    /// periodic work).
    fn poll_ms(&self) -> i32;

    /// A new table arrived.
    fn table(&mut self, io: &Io, table: &Self::Table) {
        let _ = (io, table);
    }

    /// Periodic work, after every wakeup (timers).
    fn tick(&mut self, io: &Io, table: &Self::Table) {
        let _ = (io, table);
    }

    /// One read from the TUN queue: a vnet header, then a packet (or a super-packet).
    fn outbound(&mut self, io: &Io, table: &Self::Table, read: &mut [u8]);

    /// One batch of datagrams (`got` describes the first of `batch`'s buffers).
    fn inbound(&mut self, io: &Io, table: &Self::Table, batch: &mut RecvBatch, got: &[Received]);
}

pub struct Pump<E: Encap> {
    pub tun: OwnedFd,
    pub sock: Sock,
    pub ctl: Receiver<Ctl<E::Table>>,
    pub counters: Arc<Counters>,
    /// Readable when `ctl` has news (a worker that must act on a table at once).
    pub wake: Option<Arc<Waker>>,
    pub encap: E,
}

impl<E: Encap> Pump<E> {
    pub fn run(mut self) {
        let mut table = Arc::new(E::Table::default());
        let mut read = vec![0u8; vnet::LEN + 65535];
        let mut batch = RecvBatch::new(RECV_BATCH);
        let mut got: Vec<Received> = Vec::with_capacity(RECV_BATCH);
        let c = self.counters.clone();
        let poll_ms = self.encap.poll_ms();
        loop {
            let mut fds = [
                pollfd(self.tun.as_raw_fd()),
                pollfd(self.sock.fd.as_raw_fd()),
                pollfd(self.wake.as_ref().map_or(-1, |w| w.fd())),
            ];
            // SAFETY: poll(2) on pollfds we own (a negative fd is ignored by the kernel).
            unsafe { libc::poll(fds.as_mut_ptr(), 3, poll_ms) };
            if fds[2].revents & libc::POLLIN != 0 {
                if let Some(w) = &self.wake {
                    w.drain();
                }
            }
            let io = Io {
                tun: &self.tun,
                sock: &self.sock,
                counters: &c,
            };
            while let Ok(m) = self.ctl.try_recv() {
                match m {
                    Ctl::Table(t) => {
                        table = t;
                        self.encap.table(&io, &table);
                    }
                    Ctl::Stop => return,
                }
            }
            self.encap.tick(&io, &table);
            if fds[0].revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    // SAFETY: read(2) into our buffer, within its length.
                    let n = unsafe {
                        libc::read(
                            self.tun.as_raw_fd(),
                            read.as_mut_ptr() as *mut libc::c_void,
                            read.len(),
                        )
                    };
                    if n <= vnet::LEN as isize {
                        break;
                    }
                    self.encap.outbound(&io, &table, &mut read[..n as usize]);
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                for _ in 0..BATCH {
                    match batch.recv(&self.sock.fd, &mut got) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => {
                            inc(&c.errors, 1);
                            break;
                        }
                    }
                    self.encap.inbound(&io, &table, &mut batch, &got);
                }
            }
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

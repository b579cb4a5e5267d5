//! An eventfd that wakes a worker blocked in poll(2) when the control side has news for it (a
//! new peer table): new peers are greeted at once, not at the next poll timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd(2); the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable until the next [`Waker::drain`].
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a live u64, as eventfd wants.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: read(2) of 8 bytes into a live u64.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_a_poll_and_drains() {
        let w = Waker::new().unwrap();
        let poll = |w: &Waker| {
            let mut p = libc::pollfd {
                fd: w.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one pollfd, no wait.
            unsafe { libc::poll(&mut p, 1, 0) }
        };
        assert_eq!(poll(&w), 0);
        w.wake();
        w.wake();
        assert_eq!(poll(&w), 1);
        w.drain();
        assert_eq!(poll(&w), 0);
    }
}

//! The library's long-lived descriptors in the program live above the numbers programs
//! use: a program may `dup2` onto a fixed small number (which would silently close
//! ours) or count on `open` returning the lowest free one (zdtm `pipe00`, `tty00`).
//! A program may still close them (`close_range(3, ~0U)`, as careful programs do) and
//! get the numbers back for files of its own, so each is known by what it refers to as
//! well ([`Identity`]): nothing of ours is written to, read from or closed at a number
//! that refers to something else now.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// What a descriptor refers to: device and inode (each socket has an inode of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

/// What `fd` refers to, or None if it is not open. Async-signal-safe (one fstat).
pub fn identity(fd: RawFd) -> Option<Identity> {
    // SAFETY: fstat writes into a stat buffer of its own size.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (fd >= 0 && unsafe { libc::fstat(fd, &mut st) } == 0)
        .then_some(Identity { dev: st.st_dev, ino: st.st_ino })
}

/// Whether `fd` still refers to `was`.
pub fn still(fd: RawFd, was: Identity) -> bool {
    identity(fd) == Some(was)
}

/// A descriptor of ours that other threads, the signal handler or a forked child use
/// by number: the number with its identity, so a user finds it only while it still
/// refers to what was published.
pub struct PublishedFd {
    fd: AtomicI32,
    dev: AtomicU64,
    ino: AtomicU64,
}

impl PublishedFd {
    pub const fn new() -> PublishedFd {
        PublishedFd { fd: AtomicI32::new(-1), dev: AtomicU64::new(0), ino: AtomicU64::new(0) }
    }

    pub fn publish(&self, fd: RawFd) {
        self.fd.store(-1, Ordering::SeqCst);
        if let Some(Identity { dev, ino }) = identity(fd) {
            self.dev.store(dev, Ordering::SeqCst);
            self.ino.store(ino, Ordering::SeqCst);
            self.fd.store(fd, Ordering::SeqCst);
        }
    }

    pub fn withdraw(&self) {
        self.fd.store(-1, Ordering::SeqCst);
    }

    /// The number, while it refers to what was published. Async-signal-safe.
    pub fn get(&self) -> Option<RawFd> {
        let fd = self.fd.load(Ordering::SeqCst);
        let was =
            Identity { dev: self.dev.load(Ordering::SeqCst), ino: self.ino.load(Ordering::SeqCst) };
        (fd >= 0 && still(fd, was)).then_some(fd)
    }

    /// Withdraws the number and returns it if it was still ours (a forked child closes
    /// it). Async-signal-safe.
    pub fn take(&self) -> Option<RawFd> {
        let fd = self.get();
        self.withdraw();
        fd
    }
}

/// Where the library's descriptors start when the descriptor limit allows.
pub(crate) const FLOOR: RawFd = 1000;

/// How many numbers below the limit are tried when the limit is at or below FLOOR.
const TRIES_BELOW_LIMIT: RawFd = 256;

/// `fd` moved to the lowest free number at or above [`FLOOR`] or, when RLIMIT_NOFILE is
/// at or below it, to the highest free number below the limit; close-on-exec either
/// way. Left where it is (close-on-exec set) when no such number is free.
pub fn above_program(fd: OwnedFd) -> OwnedFd {
    let limit = nofile_limit();
    let candidates = if FLOOR < limit {
        FLOOR..=FLOOR
    } else {
        (limit - TRIES_BELOW_LIMIT).max(libc::STDERR_FILENO + 1)..=limit - 1
    };
    for start in candidates.rev() {
        if fd.as_raw_fd() >= start {
            break;
        }
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, never touches an open one
        // (it takes the lowest free number at or above `start`).
        let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, start) };
        if moved >= 0 {
            // SAFETY: `moved` is new and ours; dropping `fd` closes the low number.
            return unsafe { OwnedFd::from_raw_fd(moved) };
        }
    }
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    fd
}

/// The soft RLIMIT_NOFILE, as a descriptor number bound.
fn nofile_limit() -> RawFd {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return FLOOR + 1;
    }
    limit.rlim_cur.min(RawFd::MAX as libc::rlim_t) as RawFd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> OwnedFd {
        // SAFETY: plain eventfd creation; the descriptor is ours.
        unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, 0)) }
    }

    #[test]
    fn a_published_number_closed_and_reused_is_not_ours() {
        let ours = above_program(fresh());
        let published = PublishedFd::new();
        published.publish(ours.as_raw_fd());
        assert_eq!(published.get(), Some(ours.as_raw_fd()));
        let was = identity(ours.as_raw_fd()).unwrap();
        let number = ours.as_raw_fd();
        drop(ours);
        assert_eq!(published.get(), None, "closed");
        // The program's own file at the same number.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // SAFETY: dup2 onto the number just freed; `file` stays open.
        assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), number) }, number);
        assert_eq!(published.get(), None, "reused by another file");
        assert!(!still(number, was));
        assert_eq!(published.take(), None);
        // SAFETY: the dup made above, not ours to keep.
        unsafe { libc::close(number) };
    }

    #[test]
    fn moves_above_the_floor_with_close_on_exec() {
        let moved = above_program(fresh());
        assert!(moved.as_raw_fd() >= FLOOR);
        // SAFETY: F_GETFD only queries.
        let flags = unsafe { libc::fcntl(moved.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}

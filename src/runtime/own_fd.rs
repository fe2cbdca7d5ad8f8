//! The library's long-lived descriptors in the program live above the numbers programs
//! use: a program may `dup2` onto a fixed small number (which would silently close
//! ours) or count on `open` returning the lowest free one (zdtm `pipe00`, `tty00`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Where the library's descriptors start when the descriptor limit allows.
pub const FLOOR: RawFd = 1000;

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
    fn moves_above_the_floor_with_close_on_exec() {
        let moved = above_program(fresh());
        assert!(moved.as_raw_fd() >= FLOOR);
        // SAFETY: F_GETFD only queries.
        let flags = unsafe { libc::fcntl(moved.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}

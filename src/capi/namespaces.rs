//! `unshare` and `setns`, the two libc functions the library wraps. The kernel lets only
//! a single-threaded process enter a user namespace (or unshare its signal handlers,
//! memory or thread group), and the library's own threads (the listener, a forked
//! child's orphan watcher) made every such call of a preloaded program fail with
//! EINVAL (`unshare --user`, sandboxes). For those calls only, our threads leave, the
//! system call is made, and they come back; every other call goes straight to the
//! kernel, as glibc's wrappers do. Calls made with `syscall(2)` are not seen.

use crate::error::errno;
use crate::runtime;
use std::os::raw::c_int;
use std::time::{Duration, Instant};

/// `unshare` flags the kernel refuses to a process with more than one thread.
const SINGLE_THREADED_FLAGS: c_int =
    libc::CLONE_NEWUSER | libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::CLONE_VM;
/// ioctl of a namespace descriptor: its type (`NS_GET_NSTYPE`, linux/nsfs.h).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// How long an ended thread of ours may take to leave the thread group.
const THREADS_LEAVING: Duration = Duration::from_millis(300);

fn set_errno(value: c_int) {
    // SAFETY: __errno_location points at this thread's errno.
    unsafe { *libc::__errno_location() = value };
}

/// Makes `call` (a system call: 0 or -1 with errno) with none of our threads beside
/// the caller's; a call refused with EINVAL is made again while an ended thread of ours
/// may still be leaving.
fn alone(call: impl Fn() -> c_int) -> c_int {
    let watcher = super::preload::send_watcher_away();
    let (result, error) = runtime::with_listener_paused(|listener_ended| {
        let until = Instant::now() + THREADS_LEAVING;
        loop {
            let result = call();
            let error = errno();
            let retry = result != 0
                && error == libc::EINVAL
                && (watcher || listener_ended)
                && Instant::now() < until;
            if !retry {
                return (result, error);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    if watcher {
        super::preload::bring_watcher_back();
    }
    set_errno(error);
    result
}

/// See the module documentation.
#[no_mangle]
pub extern "C" fn unshare(flags: c_int) -> c_int {
    // SAFETY: the raw system call, as glibc's unshare makes it.
    let call = || unsafe { libc::syscall(libc::SYS_unshare, flags) as c_int };
    ffi_body!("unshare", -1, {
        if flags & SINGLE_THREADED_FLAGS == 0 {
            call()
        } else {
            alone(call)
        }
    })
}

/// See the module documentation.
#[no_mangle]
pub extern "C" fn setns(fd: c_int, nstype: c_int) -> c_int {
    // SAFETY: the raw system call, as glibc's setns makes it.
    let call = || unsafe { libc::syscall(libc::SYS_setns, fd, nstype) as c_int };
    ffi_body!("setns", -1, {
        // nstype 0 accepts any namespace: ask the descriptor which it is (a PID file
        // descriptor answers with an error and is judged by its flags).
        let user = nstype & libc::CLONE_NEWUSER != 0
            || (nstype == 0
                // SAFETY: an ioctl that only reads the descriptor's type.
                && unsafe { libc::ioctl(fd, NS_GET_NSTYPE) } == libc::CLONE_NEWUSER);
        if user {
            alone(call)
        } else {
            call()
        }
    })
}

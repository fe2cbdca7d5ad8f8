//! LD_PRELOAD into a program that never calls `opal_init`: a constructor initialises
//! the runtime before `main` and a destructor finalises it at exit. Nothing here may
//! panic or abort the host: every failure turns C/R off with a warning. Only when this
//! very file is named in LD_PRELOAD does anything happen; a program linked with
//! `-lopalcrs` calls `opal_init` itself.

use crate::runtime;
use std::ffi::{CStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = on_load;

#[used]
#[link_section = ".fini_array"]
static DESTRUCTOR: extern "C" fn() = on_unload;

static INITIALISED_HERE: AtomicBool = AtomicBool::new(false);

/// Our tools link the library's code; a preload inherited by them must stay inert.
const TOOLS: &[&str] = &["opal-checkpoint", "opal-restart", "opal-info", "opal-run"];

extern "C" fn on_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(ours) = crate::elf::loaded_from() else { return };
        let preload = std::env::var_os("LD_PRELOAD").unwrap_or_default();
        if !names_us(&preload, &ours) || is_our_tool() {
            return;
        }
        if open_mpi_loaded() {
            warn(
                "Open MPI's libopen-pal is loaded in this process; libopalcrs stays out of its way",
            );
            return;
        }
        // Off the environment while init may run a child (CRIU is probed there); put
        // back afterwards unless opal_cr_preload_children=0, so that whatever a wrapper
        // executes is preloaded too.
        strip_from_preload(&preload, &ours);
        match runtime::init() {
            Ok(()) => {
                INITIALISED_HERE.store(true, Ordering::SeqCst);
                runtime::set_preloaded_from(ours.clone());
                super::vtable::publish_selected();
                // With opal_cr_preload_children=0 the library stays in this process:
                // its forked children get no orphan watcher either.
                if runtime::params().is_some_and(|p| p.bool("opal_cr_preload_children")) {
                    static ATFORK: std::sync::Once = std::sync::Once::new();
                    // SAFETY: registering fork handlers that only make async-signal-safe
                    // calls.
                    ATFORK.call_once(|| unsafe {
                        libc::pthread_atfork(
                            Some(before_fork),
                            Some(after_fork_in_parent),
                            Some(watch_for_orphaning),
                        );
                    });
                }
            }
            Err(e) => warn(&format!("checkpoint/restart disabled: {e}")),
        }
        if runtime::params().is_some_and(|p| p.bool("opal_cr_preload_children")) {
            std::env::set_var("LD_PRELOAD", &preload);
        }
    });
}

/// The process that is forking, noted before the fork for its child to watch.
static FORKING_PID: AtomicI32 = AtomicI32::new(0);
/// Threads inside `fork` right now, and the thread taking over the runtime in a
/// daemon (0: none). The two never overlap: a child forked while the runtime is being
/// set up would inherit its locks held, and its own take-over would hang on them.
static FORKS_IN_PROGRESS: AtomicI32 = AtomicI32::new(0);
static TAKING_OVER: AtomicI32 = AtomicI32::new(0);
/// How often a forked child looks whether its parent is still there.
const ORPHAN_POLL: Duration = Duration::from_millis(100);

fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// `pthread_atfork` prepare handler: waits out a take-over in progress (unless this
/// thread is the one taking over, starting CRIU).
extern "C" fn before_fork() {
    FORKS_IN_PROGRESS.fetch_add(1, Ordering::SeqCst);
    let me = thread_id();
    loop {
        let owner = TAKING_OVER.load(Ordering::SeqCst);
        if owner == 0 || owner == me {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    FORKING_PID.store(std::process::id() as i32, Ordering::SeqCst);
}

extern "C" fn after_fork_in_parent() {
    FORKS_IN_PROGRESS.fetch_sub(1, Ordering::SeqCst);
}

/// `pthread_atfork` child handler: a forked child never answers for its parent (the
/// runtime closed the parent's socket), but a daemon's child whose parent exits is the
/// program from then on. A thread waits for that and then initialises the runtime in
/// the child. Only async-signal-safe calls here; an exec ends the thread.
extern "C" fn watch_for_orphaning() {
    FORKS_IN_PROGRESS.store(0, Ordering::SeqCst);
    TAKING_OVER.store(0, Ordering::SeqCst);
    WATCHED_PARENT.store(FORKING_PID.load(Ordering::SeqCst), Ordering::SeqCst);
    // The word the kernel clears (and wakes) when this, the child's only thread, ends.
    let mut tid_word: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the address given.
    if unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_word as *mut *mut libc::c_int) } != 0
        || tid_word.is_null()
    {
        // Without it the watcher could outlive the program's thread: no watcher.
        return;
    }
    // The watcher starts with the forking thread's seccomp state, read here, before the
    // program runs on: a child stopped (or dumped) right after fork must not be caught
    // with this read's /proc descriptor open (CRIU cannot reopen it at restore).
    let Some(state) = seccomp_state(c"/proc/thread-self/status") else { return };
    FORKED_SECCOMP.store(state, Ordering::SeqCst);
    // Created with every signal blocked, which it inherits: the program's signals are
    // not taken by it (the forking thread's own mask is put back at once).
    WATCHED_TID_WORD.store(tid_word, Ordering::SeqCst);
    start_watcher();
}

/// Starts the orphan watcher on the TID word noted at the fork.
fn start_watcher() {
    let tid_word = WATCHED_TID_WORD.load(Ordering::SeqCst);
    let program_mask = runtime::block_all_signals();
    // SAFETY: a detached thread running `watch_parent`, which takes the address by value.
    unsafe {
        let mut thread: libc::pthread_t = std::mem::zeroed();
        if libc::pthread_create(&mut thread, std::ptr::null(), watch_parent, tid_word.cast()) == 0 {
            WATCHING.store(true, Ordering::SeqCst);
            libc::pthread_detach(thread);
        }
    }
    runtime::restore_signal_mask(&program_mask);
}

/// The forking thread's TID word the watcher waits on (see `watch_for_orphaning`).
static WATCHED_TID_WORD: AtomicPtr<libc::c_int> = AtomicPtr::new(std::ptr::null_mut());
/// Whether a watcher waits for the parent to go; `WATCHER_AWAY` asks it to leave.
static WATCHING: AtomicBool = AtomicBool::new(false);
static WATCHER_AWAY: AtomicBool = AtomicBool::new(false);

/// Asks the orphan watcher, if one waits, to leave at once (the program's thread needs
/// to be the only one); true if there was one to ask.
pub(super) fn send_watcher_away() -> bool {
    if !WATCHING.load(Ordering::SeqCst) {
        return false;
    }
    WATCHER_AWAY.store(true, Ordering::SeqCst);
    // SAFETY: wakes whoever waits on the forking thread's TID word: the watcher.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WATCHED_TID_WORD.load(Ordering::SeqCst),
            libc::FUTEX_WAKE,
            1,
        );
    }
    true
}

/// Starts the watcher again after `send_watcher_away`.
pub(super) fn bring_watcher_back() {
    WATCHER_AWAY.store(false, Ordering::SeqCst);
    start_watcher();
}

/// The seccomp state of the thread that forked, at the fork (see [`seccomp_state`]).
static FORKED_SECCOMP: AtomicU64 = AtomicU64::new(0);

/// The parent a forked child watches (set in the child, so a later fork of the child
/// does not change it).
static WATCHED_PARENT: AtomicI32 = AtomicI32::new(0);

/// Ends the watcher, the last thread left once the program's only thread has ended
/// alone (the raw exit call, or killed by a seccomp filter: zdtm `seccomp_*`), so that
/// the process ends as it would have without it: the kernel reports the last thread's
/// end as the process's, so the watcher ends the same way.
fn end_like_the_program_thread() -> ! {
    let status = leader_exit_status().unwrap_or(0);
    match status & 0x7f {
        0 => {}
        libc::SIGSYS => killed_by_seccomp(),
        // SIGKILL: the end of a SECCOMP_MODE_STRICT violation.
        // SAFETY: a signal to this process.
        signal => unsafe {
            libc::kill(libc::getpid(), signal);
        },
    }
    exit_thread((status >> 8) & 0xff)
}

/// Ends the watcher, with nothing but the exit system call: a seccomp filter may forbid
/// what glibc's thread exit does.
fn exit_thread(code: i32) -> ! {
    WATCHING.store(false, Ordering::SeqCst);
    // SAFETY: SYS_exit ends this thread only; it holds no lock and nothing waits for it.
    unsafe { libc::syscall(libc::SYS_exit, code) };
    unreachable!("SYS_exit returned")
}

/// The wait status of the thread group leader that has ended (`exit_code`, field 52 of
/// /proc/self/stat).
fn leader_exit_status() -> Option<i32> {
    let mut buf = [0u8; 2048];
    let text = read_proc(c"/proc/self/stat", &mut buf)?;
    // Fields 3 on follow the command name's closing parenthesis.
    let rest = &text[text.iter().rposition(|&b| b == b')')? + 1..];
    let field = rest.split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(52 - 3)?;
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// A file of /proc read into a buffer on the stack: the watcher never allocates (its
/// first `malloc` would map a glibc arena of its own into the program).
fn read_proc<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: open, read into a buffer of its length, close.
    let len = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        usize::try_from(len).ok()?
    };
    Some(&buf[..len])
}

/// A thread's seccomp mode and number of filters (the `Seccomp:` and `Seccomp_filters:`
/// lines of its status), as `mode << 32 | filters`.
fn seccomp_state(status_path: &CStr) -> Option<u64> {
    let mut buf = [0u8; 4096];
    let text = read_proc(status_path, &mut buf)?;
    let field = |name: &[u8]| -> Option<u64> {
        let line = text.split(|&b| b == b'\n').find(|l| l.starts_with(name))?;
        let digits = line[name.len()..].iter().skip_while(|b| !b.is_ascii_digit());
        Some(digits.take_while(|b| b.is_ascii_digit()).fold(0, |n, b| n * 10 + u64::from(b - b'0')))
    };
    Some(field(b"Seccomp:")? << 32 | field(b"Seccomp_filters:").unwrap_or(0))
}

/// The end a seccomp filter gives the last thread it kills: the watcher confines itself
/// to a filter that kills it at its next system call, and makes one.
fn killed_by_seccomp() {
    let filter = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }]; // BPF_RET|BPF_K: KILL_THREAD
    let program = libc::sock_fprog { len: 1, filter: filter.as_ptr().cast_mut() };
    // SAFETY: no_new_privs and a filter for this thread alone, then the call it kills.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program);
        libc::getppid();
    }
}

/// The orphan watcher. It lives only as long as the thread that forked (the child's
/// only thread until the program starts more): the process then ends as it would
/// without the library. It leaves as soon as that thread's seccomp state differs from
/// its own (inherited at its start): a program confining itself gets no thread beside
/// its own (CRIU restores the filters of threads that share theirs as one, which later
/// `SECCOMP_FILTER_FLAG_TSYNC` calls rely on: zdtm `seccomp_filter_tsync`). Parked, it
/// makes these system calls every `ORPHAN_POLL`: a futex wait on the forking thread's
/// TID word (which the kernel clears and wakes when that thread ends), a read of that
/// thread's /proc status, and `getppid`.
extern "C" fn watch_parent(tid_word: *mut libc::c_void) -> *mut libc::c_void {
    let tid_word = tid_word.cast::<libc::c_int>();
    // Named, so that a process dumping its tree can wait for it to leave a child that
    // confined itself (see `control::settle_watchers`).
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, crate::control::WATCHER_THREAD_NAME.as_ptr()) };
    // SAFETY: getpid has no preconditions. In a forked child the thread that forked is
    // the thread group leader.
    let forker = unsafe { libc::getpid() };
    let parent = WATCHED_PARENT.load(Ordering::SeqCst);
    let mut forker_status = [0u8; 48];
    let path = {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut forker_status[..]);
        let _ = write!(cursor, "/proc/self/task/{forker}/status\0");
        let len = cursor.position() as usize;
        CStr::from_bytes_with_nul(&forker_status[..len]).ok()
    };
    let Some(path) = path else { return std::ptr::null_mut() };
    let own = FORKED_SECCOMP.load(Ordering::SeqCst);
    let confined = || seccomp_state(path) != Some(own);
    let poll = libc::timespec { tv_sec: 0, tv_nsec: ORPHAN_POLL.as_nanos() as libc::c_long };
    // A child that execs at once (a helper that forks twice, then execs) is gone before
    // the first look.
    loop {
        // SAFETY: the TID word lives as long as the forking thread's descriptor, which
        // glibc keeps until that thread is joined (never: it is the main thread) or the
        // process ends. Shared futex: the kernel's wake on thread exit is not private.
        unsafe {
            libc::syscall(libc::SYS_futex, tid_word, libc::FUTEX_WAIT, forker, &poll, 0, 0);
        }
        // SAFETY: as above; the kernel writes the word, so read it volatile.
        if unsafe { std::ptr::read_volatile(tid_word) } != forker {
            end_like_the_program_thread();
        }
        if WATCHER_AWAY.load(Ordering::SeqCst) {
            exit_thread(0);
        }
        if confined() {
            exit_thread(0);
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            break;
        }
    }
    WATCHING.store(false, Ordering::SeqCst);
    if confined() {
        exit_thread(0);
    }
    // No fork may run meanwhile (see TAKING_OVER); a daemon forking again is waited for.
    let me = thread_id();
    loop {
        TAKING_OVER.store(me, Ordering::SeqCst);
        if FORKS_IN_PROGRESS.load(Ordering::SeqCst) == 0 {
            break;
        }
        TAKING_OVER.store(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::panic::catch_unwind(|| match runtime::init() {
        Ok(()) => super::vtable::publish_selected(),
        Err(e) => warn(&format!("checkpoint/restart disabled: {e}")),
    });
    TAKING_OVER.store(0, Ordering::SeqCst);
    std::ptr::null_mut()
}

extern "C" fn on_unload() {
    if INITIALISED_HERE.swap(false, Ordering::SeqCst) {
        let _ = std::panic::catch_unwind(runtime::finalize);
    }
}

fn warn(message: &str) {
    crate::output::ensure_logger();
    log::warn!(target: "cr", "libopalcrs (LD_PRELOAD): {message}");
}

/// LD_PRELOAD entries are separated by blanks or colons.
fn entries(preload: &OsString) -> impl Iterator<Item = &[u8]> {
    preload.as_bytes().split(|&b| b == b':' || b == b' ' || b == b'\t').filter(|e| !e.is_empty())
}

/// Whether an entry is this file: the same file, or a bare name the loader resolved to it.
fn is_us(entry: &[u8], ours: &Path) -> bool {
    let entry = Path::new(std::ffi::OsStr::from_bytes(entry));
    if entry.components().count() == 1 {
        return ours.file_name() == Some(entry.as_os_str());
    }
    match (entry.canonicalize(), ours.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn names_us(preload: &OsString, ours: &Path) -> bool {
    entries(preload).any(|e| is_us(e, ours))
}

/// LD_PRELOAD without this library (for `opal_cr_preload_children=0`).
fn strip_from_preload(preload: &OsString, ours: &Path) {
    let rest: Vec<&[u8]> = entries(preload).filter(|e| !is_us(e, ours)).collect();
    if rest.is_empty() {
        std::env::remove_var("LD_PRELOAD");
    } else {
        std::env::set_var("LD_PRELOAD", OsString::from_vec(rest.join(&b':')));
    }
}

fn is_our_tool() -> bool {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|exe| exe.file_name().map(|n| TOOLS.iter().any(|t| n == *t)))
        .unwrap_or(false)
}

/// Whether Open MPI's own OPAL library is loaded in this process.
fn open_mpi_loaded() -> bool {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        found: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid info whose name is NUL-terminated or NULL.
        let name = unsafe { (*info).dlpi_name };
        if !name.is_null()
            && unsafe { CStr::from_ptr(name) }.to_bytes().windows(11).any(|w| w == b"libopen-pal")
        {
            // SAFETY: `found` points to the bool below.
            unsafe { *(found as *mut bool) = true };
            return 1;
        }
        0
    }
    let mut found = false;
    // SAFETY: the callback only reads the loader's data and writes our bool.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut found as *mut bool).cast()) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_seccomp_mode_and_filters_are_read_from_its_status() {
        let dir = std::env::temp_dir().join(format!("opalcrs-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = dir.join("status");
        std::fs::write(&status, "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t3\nSpeculation:\t1\n")
            .unwrap();
        let path = std::ffi::CString::new(status.to_str().unwrap()).unwrap();
        assert_eq!(seccomp_state(&path), Some(2 << 32 | 3));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(seccomp_state(c"/proc/thread-self/status"), Some(0), "the test is not confined");
    }

    #[test]
    fn recognises_itself_in_ld_preload() {
        let ours = std::env::current_exe().unwrap();
        let name = ours.file_name().unwrap().to_os_string();
        assert!(names_us(&OsString::from(format!("/x/other.so:{}", ours.display())), &ours));
        assert!(names_us(&name, &ours));
        assert!(!names_us(&OsString::from("/x/other.so libfoo.so"), &ours));
    }

    #[test]
    fn open_mpi_is_not_loaded_in_the_test_binary() {
        assert!(!open_mpi_loaded());
    }
}

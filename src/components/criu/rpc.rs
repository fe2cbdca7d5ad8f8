//! Talking to CRIU through its RPC service: one `criu swrk <fd>` helper per call, one
//! request and one answer over a `SOCK_SEQPACKET` socket pair.
//!
//! Why RPC over `criu swrk` rather than libcriu loaded at run time:
//! - no link-time or dlopen dependency: the library loads on machines without CRIU, and
//!   the only thing needed at run time is a `criu` executable (found by `binary`);
//! - we fork the helper ourselves, so for a self-dump it is detached (double fork) and
//!   neither the helper nor a zombie of it is part of the image (libcriu's `daemon()`
//!   fork leaves a zombie child in the dumped process, whose PID must then be free too);
//! - thread-safe by construction: each call has its own session and its own options,
//!   where libcriu keeps one global option set.

use super::binary::CriuBinary;
use super::proto::{NetworkLock, Opts, ReqType, Request, Response};
use crate::codes;
use crate::error::{Error, Result};
use crate::owner::Owner;
use log::debug;
use std::ffi::{c_char, c_int, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Room for one answer of CRIU (they are a few hundred bytes).
pub(crate) const RESPONSE_CAPACITY: usize = 16 * 1024;

/// Exit status of a forked helper whose `exec` or setup failed.
pub(crate) const HELPER_FAILED: c_int = 127;

/// A harmless error CRIU logs on every run where it lacks CAP_SYS_RESOURCE.
const HARMLESS_ERROR: &str = "RLIMIT_NOFILE";

/// Endings of CRIU's error lines that only say that a step failed, after the line that
/// says why ("Dump files (pid: N) failed with -1", "Dumping FAILED.").
const SUMMARY_ERRORS: &[&str] = &["failed with -1", "FAILED."];

/// How many of the log's first error lines go into an error message.
const LOG_ERROR_LINES: usize = 3;

const CHECK_LOG: &str = "check.log";

/// What to dump and how. `pid` may be the caller's own PID: a self-dump.
pub struct DumpOptions<'a> {
    pub pid: i32,
    pub images_dir: &'a Path,
    /// Name of CRIU's log file inside `images_dir`.
    pub log_file: &'a str,
    pub log_level: i32,
    pub leave_running: bool,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    /// None leaves CRIU's default (iptables, which costs nothing without a connection).
    pub network_lock: Option<LockMethod>,
    /// CRIU `--external` declarations, e.g. `unix[INODE]`.
    pub external: &'a [String],
    /// Run CRIU as this (uid, gid) with only the capabilities a dump needs (CRIU's
    /// unprivileged mode): a root tool dumping another user's process, so that CRIU
    /// may read that process's limits without CAP_SYS_RESOURCE and writes nowhere the
    /// user could not.
    pub as_user: Option<(u32, u32)>,
}

/// How a dump locks the network while it takes TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LockMethod {
    /// nftables when this CRIU and kernel support it, else iptables; decided where CRIU
    /// runs (the check needs its privileges).
    Auto,
    Fixed(NetworkLock),
}

impl LockMethod {
    fn resolve(self, bin: &CriuBinary) -> NetworkLock {
        match self {
            LockMethod::Fixed(method) => method,
            LockMethod::Auto if nftables_lock_supported(bin) => NetworkLock::Nftables,
            LockMethod::Auto => NetworkLock::Iptables,
        }
    }
}

/// `criu check --feature network_lock_nftables` (CRIU built with libnftables, a kernel
/// with nftables set concatenations), asked once per binary for the life of the process.
fn nftables_lock_supported(bin: &CriuBinary) -> bool {
    static ANSWERS: std::sync::OnceLock<std::sync::Mutex<Vec<(PathBuf, bool)>>> =
        std::sync::OnceLock::new();
    let mut answers =
        ANSWERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, known)) = answers.iter().find(|(path, _)| *path == bin.path) {
        return *known;
    }
    // Read from its output, not its exit status: a host program that reaps every child
    // (a shell's SIGCHLD handler) may take the status first.
    let mut answer = String::new();
    let spawned = std::process::Command::new(&bin.path)
        .args(["check", "--feature", "network_lock_nftables"])
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = spawned {
        if let Some(mut stdout) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut stdout, &mut answer);
        }
        let _ = child.wait();
    }
    let supported = answer.contains("network_lock_nftables is supported");
    debug!("crs:criu: {} supports the nftables network lock: {supported}", bin.path.display());
    answers.push((bin.path.clone(), supported));
    supported
}

impl<'a> DumpOptions<'a> {
    /// Process `pid` into `images_dir`, left running, logged to `dump.log` at CRIU's
    /// default level, with every other option off.
    pub fn new(pid: i32, images_dir: &'a Path) -> Self {
        DumpOptions {
            pid,
            images_dir,
            log_file: "dump.log",
            log_level: super::proto::DEFAULT_LOG_LEVEL,
            leave_running: true,
            shell_job: false,
            ext_unix_sk: false,
            tcp_established: false,
            file_locks: false,
            network_lock: None,
            external: &[],
            as_user: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpOutcome {
    /// The images are written; this is still the original process.
    Dumped,
    /// This process is the restored copy of a self-dump (CRIU answers the restored
    /// image's pending request with `restored = true`).
    Restored,
}

/// Dumps process `opts.pid` (and its children) into `opts.images_dir`.
pub fn dump(bin: &CriuBinary, opts: &DumpOptions) -> Result<DumpOutcome> {
    if opts.pid <= 0 {
        // CRIU would take a missing or zero PID as "dump the caller".
        return Err(Error::new(
            codes::OPAL_ERR_BAD_PARAM,
            format!("criu dump: bad PID {}", opts.pid),
        ));
    }
    let images = ImagesDir::open(opts.images_dir)?;
    dump_into(bin, opts, images)
}

/// [`dump`] into a directory already open (`opts.images_dir` names it in messages).
pub(crate) fn dump_into(
    bin: &CriuBinary,
    opts: &DumpOptions,
    images: ImagesDir,
) -> Result<DumpOutcome> {
    check_log_file_name(opts.log_file)?;
    let request = Request {
        kind: ReqType::DUMP,
        opts: Some(Opts {
            images_dir: Some(images.helper_path()),
            pid: Some(opts.pid),
            leave_running: opts.leave_running,
            ext_unix_sk: opts.ext_unix_sk,
            tcp_established: opts.tcp_established,
            shell_job: opts.shell_job,
            file_locks: opts.file_locks,
            network_lock: opts.network_lock.map(|method| method.resolve(bin)),
            log_level: opts.log_level,
            log_file: Some(opts.log_file.to_string()),
            external: opts.external.to_vec(),
            unprivileged: unprivileged_mode() || opts.as_user.is_some(),
            ..Opts::default()
        }),
    }
    .encode();
    let self_dump = i64::from(opts.pid) == i64::from(std::process::id());
    debug!(
        "crs:criu: dump of pid {} into {} (self-dump: {self_dump})",
        opts.pid,
        images.path.display()
    );
    let started = Instant::now();
    // Detached helper: it is not our child, so a self-dump's image holds no trace of it.
    let as_user =
        opts.as_user.map(|(uid, gid)| (Owner::without_groups(uid, gid), DUMP_CAPABILITIES));
    let session = Session::start(bin, Helper::Detached, &[images.fd()], as_user)?;
    let helper_started = started.elapsed();
    let images_dir = images.close();
    // A self-dump is frozen inside `call`, waiting for the answer; the restored copy
    // wakes up there too and finds CRIU's "restored" answer on the socket.
    let response = session.call(&request)?;
    drop(session);
    expect_kind(&response, ReqType::DUMP)?;
    if !response.success {
        let what = format!("dump of process {}", opts.pid);
        return Err(failure(&what, &response, &images_dir.join(opts.log_file)));
    }
    let outcome =
        if response.restored == Some(true) { DumpOutcome::Restored } else { DumpOutcome::Dumped };
    debug!(
        "crs:criu: dump of pid {}: {outcome:?} after {:?} (swrk started after {helper_started:?})",
        opts.pid,
        started.elapsed()
    );
    Ok(outcome)
}

/// `criu check` through the service, logging into a temporary directory that is
/// removed on success and kept (named in the error) on failure.
pub(crate) fn check(bin: &CriuBinary) -> Result<()> {
    let dir = TempDir::new("opalcrs-criu-check")?;
    let images = ImagesDir::open(dir.path())?;
    let request = Request {
        kind: ReqType::CHECK,
        opts: Some(Opts {
            images_dir: Some(images.helper_path()),
            log_file: Some(CHECK_LOG.to_string()),
            unprivileged: unprivileged_mode(),
            ..Opts::default()
        }),
    }
    .encode();
    let started = Instant::now();
    // Detached: the check runs in the checkpointed program, whose SIGCHLD handler must
    // not hear of it.
    let session = Session::start(bin, Helper::Detached, &[images.fd()], None)?;
    images.close();
    let response = session.call(&request)?;
    drop(session);
    expect_kind(&response, ReqType::CHECK)?;
    debug!(
        "crs:criu: check of {}: {} after {:?}",
        bin.path.display(),
        response.success,
        started.elapsed()
    );
    if response.success {
        Ok(())
    } else {
        let log = dir.keep().join(CHECK_LOG);
        Err(failure(&format!("check ({})", bin.path.display()), &response, &log))
    }
}

/// Non-root callers ask CRIU for its CAP_CHECKPOINT_RESTORE mode; CRIU then checks its
/// own capabilities and says what is missing.
pub(crate) fn unprivileged_mode() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() != 0 }
}

/// An open images directory. CRIU gets the directory as a descriptor that the helper
/// inherits and names `/proc/self/fd/N`: CRIU 4.1.1 `readlink()`s the images path it is
/// given (so a plain path fails with EINVAL), and `images_dir_fd` would make it look in
/// `/proc/<socket creator>/fd/`, which a helper in a new PID namespace cannot see.
pub(crate) struct ImagesDir {
    /// Absolute path, for messages and the log.
    pub(crate) path: PathBuf,
    fd: OwnedFd,
}

impl ImagesDir {
    pub(crate) fn open(dir: &Path) -> Result<ImagesDir> {
        let context = || format!("CRIU images directory {}", dir.display());
        let path = dir.canonicalize().map_err(|e| Error::io(context(), e))?;
        if !path.is_dir() {
            return Err(Error::new(
                codes::OPAL_ERR_BAD_PARAM,
                format!("{}: not a directory", context()),
            ));
        }
        let file = std::fs::File::open(&path).map_err(|e| Error::io(context(), e))?;
        Ok(ImagesDir { path, fd: file.into() })
    }

    /// A directory opened by the caller; `path` is for messages and the log.
    pub(crate) fn from_fd(fd: OwnedFd, path: PathBuf) -> ImagesDir {
        ImagesDir { path, fd }
    }

    /// The descriptor the helper must inherit.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The directory as the helper sees it.
    pub(crate) fn helper_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// Closes our descriptor once the helper has its copy (a self-dump must not hold
    /// it), keeping the path.
    pub(crate) fn close(self) -> PathBuf {
        self.path
    }
}

/// CRIU takes the log file name relative to the images directory, without subdirectories.
pub(crate) fn check_log_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::new(
            codes::OPAL_ERR_BAD_PARAM,
            format!(
                "CRIU log file {name:?}: must be a plain file name (it lives in the images directory)"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn expect_kind(response: &Response, kind: ReqType) -> Result<()> {
    if response.kind == kind {
        return Ok(());
    }
    let detail = response.cr_errmsg.as_deref().unwrap_or("no message");
    Err(Error::msg(format!(
        "criu swrk answered type {} to a type {} request ({detail})",
        response.kind.0, kind.0
    )))
}

/// The error for a failed CRIU operation: CRIU's own message and errno, the log's path
/// and its first real error lines.
pub(crate) fn failure(what: &str, response: &Response, log: &Path) -> Error {
    let mut message = format!("criu {what} failed");
    if let Some(text) = response.cr_errmsg.as_deref().filter(|m| !m.contains(HARMLESS_ERROR)) {
        message.push_str(&format!(": {}", text.trim()));
    }
    if let Some(errno) = response.cr_errno.filter(|&e| e != 0) {
        message.push_str(&format!(" (errno {errno}: {})", io::Error::from_raw_os_error(errno)));
    }
    message.push_str(&format!("; log {}", log.display()));
    let lines = first_log_errors(log);
    if !lines.is_empty() {
        message.push_str(&format!(": {}", lines.join(" | ")));
    }
    let code = if super::binary::privileged() {
        codes::OPAL_ERROR
    } else {
        message.push_str(" (not root and no CAP_CHECKPOINT_RESTORE)");
        codes::OPAL_ERR_PERM
    };
    Error::new(code, message)
}

/// The first `Error (...)` lines of a CRIU log, without their timestamps, skipping the
/// harmless RLIMIT_NOFILE line and the summary lines (warnings are `Warn` lines and
/// never match).
fn first_log_errors(log: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(log) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| line.find("Error (").map(|at| line[at..].trim_end()))
        .filter(|line| !line.contains(HARMLESS_ERROR))
        .filter(|line| !SUMMARY_ERRORS.iter().any(|summary| line.ends_with(summary)))
        .take(LOG_ERROR_LINES)
        .map(str::to_string)
        .collect()
}

/// How the `criu swrk` helper relates to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Helper {
    /// Our child, reaped when the session ends. Needed for restores: `rst_sibling`
    /// makes the restored task a sibling of the helper, i.e. our child.
    Child,
    /// Double fork: the helper's parent exits at once, so it is nobody's child here.
    Detached,
}

/// One `criu swrk` helper and our end of its socket.
pub(crate) struct Session {
    socket: OwnedFd,
    helper_pid: Option<libc::pid_t>,
}

impl Session {
    /// Starts the helper. `inherit_fds` are descriptors the helper must get (for
    /// `inherit_fd` restore options).
    pub(crate) fn start(
        bin: &CriuBinary,
        helper: Helper,
        inherit_fds: &[RawFd],
        as_user: Option<(Owner, &'static [u32])>,
    ) -> Result<Session> {
        let (ours, theirs) = socket_pair()?;
        let mut command = SwrkCommand::new(bin, theirs.as_raw_fd(), inherit_fds)?;
        command.as_user = as_user;
        // SAFETY: `command` is fully prepared; spawn_swrk only makes system calls in the
        // forked children.
        let spawned = unsafe { spawn_swrk(&command, helper) };
        drop(theirs);
        let pid = spawned.map_err(|errno| spawn_error(bin, errno))?;
        debug!("crs:criu: started {} swrk ({helper:?}, pid {pid})", bin.path.display());
        Ok(Session { socket: ours, helper_pid: (helper == Helper::Child).then_some(pid) })
    }

    /// Sends one request and returns CRIU's answer.
    pub(crate) fn call(&self, request: &[u8]) -> Result<Response> {
        self.call_within(request, None, |_| true)
    }

    /// [`call`](Session::call) that waits at most `limit` for the answer: then the
    /// helper, if it is our child, is killed, and the error has code OPAL_ERR_TIMEOUT.
    /// Notifications (`notify_scripts`) met on the way go to `on_notice`, whose verdict
    /// is CRIU's acknowledgement; the time it takes does not count against `limit`.
    pub(crate) fn call_within(
        &self,
        request: &[u8],
        limit: Option<Duration>,
        mut on_notice: impl FnMut(&Response) -> bool,
    ) -> Result<Response> {
        let mut deadline = limit.map(|limit| Instant::now() + limit);
        let fd = self.socket.as_raw_fd();
        send_message(fd, request)
            .map_err(|errno| exchange_error("sending the request to", errno))?;
        let mut buffer = vec![0u8; RESPONSE_CAPACITY];
        loop {
            let answered = readable_before(fd, deadline)
                .map_err(|e| Error::io("waiting for the answer of criu swrk", e))?;
            if !answered {
                if let Some(pid) = self.helper_pid {
                    // SAFETY: plain kill of our own child, not yet reaped (Drop reaps it).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                return Err(Error::new(
                    codes::OPAL_ERR_TIMEOUT,
                    format!("criu swrk did not answer in {limit:?}"),
                ));
            }
            let len = receive_message(fd, &mut buffer)
                .map_err(|errno| exchange_error("reading the answer of", errno))?;
            let response = Response::decode(&buffer[..len])?;
            if response.kind != ReqType::NOTIFY {
                return Ok(response);
            }
            let started = Instant::now();
            let verdict = on_notice(&response);
            deadline = deadline.map(|deadline| deadline + started.elapsed());
            send_message(fd, &super::proto::notify_answer(verdict))
                .map_err(|errno| exchange_error("acknowledging a notification of", errno))?;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A helper still waiting for a request sees the shutdown and exits.
        // SAFETY: the socket is open for the life of self.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(pid) = self.helper_pid {
            let _ = wait_exit_code(pid);
        }
    }
}

pub(crate) fn spawn_error(bin: &CriuBinary, errno: c_int) -> Error {
    let err = io::Error::from_raw_os_error(errno);
    Error::new(
        codes::OPAL_ERR_NOT_AVAILABLE,
        format!("cannot start {} swrk: {err}", bin.path.display()),
    )
}

pub(crate) fn exchange_error(doing: &str, errno: c_int) -> Error {
    let detail = match errno {
        libc::ECONNRESET => "it ended without answering".to_string(),
        libc::EMSGSIZE => format!("the answer exceeds {RESPONSE_CAPACITY} bytes"),
        _ => io::Error::from_raw_os_error(errno).to_string(),
    };
    Error::msg(format!("{doing} criu swrk: {detail}"))
}

pub(crate) fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for the two descriptors.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::io("socketpair for criu swrk", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The `criu swrk <fd>` command line and the descriptors it must inherit, prepared
/// before fork so that the child only makes system calls. (The image follower is
/// started the same way: [`SwrkCommand::program`].)
pub(crate) struct SwrkCommand {
    path: CString,
    /// Owns the strings `argv` points to.
    _args: Vec<CString>,
    argv: Vec<*const c_char>,
    /// Our environment without LD_PRELOAD: CRIU must never run with this (or any)
    /// library preloaded. Owns the strings `envp` points to.
    _env: Vec<CString>,
    envp: Vec<*const c_char>,
    /// The helper's end of the socket pair (the follower's: its directory).
    socket: RawFd,
    inherit_fds: Vec<RawFd>,
    /// Run CRIU as this user with only these capabilities (its unprivileged mode): see
    /// [`DumpOptions::as_user`] and [`RestoreOptions::as_owner`](super::restore::RestoreOptions).
    pub(crate) as_user: Option<(Owner, &'static [u32])>,
}

impl SwrkCommand {
    pub(crate) fn new(bin: &CriuBinary, socket: RawFd, inherit_fds: &[RawFd]) -> Result<Self> {
        let path = CString::new(bin.path.as_os_str().as_bytes()).map_err(|_| {
            Error::new(codes::OPAL_ERR_BAD_PARAM, "CRIU binary path contains a NUL byte")
        })?;
        let args = vec![
            CString::new("swrk").expect("no NUL"),
            CString::new(socket.to_string()).expect("digits"),
        ];
        let env: Vec<CString> = std::env::vars_os()
            .filter(|(name, _)| name != "LD_PRELOAD")
            .filter_map(|(name, value)| {
                let mut entry = name.into_vec();
                entry.push(b'=');
                entry.extend(value.into_vec());
                CString::new(entry).ok()
            })
            .collect();
        Ok(SwrkCommand::assemble(path, args, env, socket, inherit_fds))
    }

    /// Another program of ours, `path args…`, with an empty environment; `kept_fd` is
    /// the one descriptor it inherits.
    pub(crate) fn program(path: CString, args: Vec<CString>, kept_fd: RawFd) -> Self {
        SwrkCommand::assemble(path, args, Vec::new(), kept_fd, &[])
    }

    fn assemble(
        path: CString,
        args: Vec<CString>,
        env: Vec<CString>,
        socket: RawFd,
        inherit_fds: &[RawFd],
    ) -> Self {
        let null = std::iter::once(std::ptr::null());
        let argv = std::iter::once(path.as_ptr())
            .chain(args.iter().map(|a| a.as_ptr()))
            .chain(null.clone())
            .collect();
        let envp = env.iter().map(|e| e.as_ptr()).chain(null).collect();
        SwrkCommand {
            path,
            _args: args,
            argv,
            _env: env,
            envp,
            socket,
            inherit_fds: inherit_fds.to_vec(),
            as_user: None,
        }
    }
}

/// A fork by the raw system call: the child ends with `exit_signal` to its parent (0:
/// none, so the program we live in gets no SIGCHLD for the library's helper, and its
/// `waitpid(-1)` cannot reap it; only a wait with `__WALL` sees it). No fork handlers
/// run and no libc lock is reset, so the child may only make system calls.
///
/// # Safety
/// The child must only make async-signal-safe calls.
unsafe fn clone_process(exit_signal: c_int) -> libc::pid_t {
    // SAFETY: clone without CLONE_VM and without a new stack is a fork: the child gets
    // a copy of the address space and goes on from here.
    unsafe {
        let flags = exit_signal as libc::c_ulong;
        libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) as libc::pid_t
    }
}

pub(crate) use crate::error::errno;

/// Forks and execs `criu swrk`; returns the helper's PID (our child for `Helper::Child`,
/// not ours for `Helper::Detached`) or the errno of the step that failed, `exec`
/// included (reported through a close-on-exec pipe).
///
/// # Safety
/// Async-signal-safe: only system calls, no allocation, so it may run in a child forked
/// from a multi-threaded process. The descriptors in `command` must be open.
pub(crate) unsafe fn spawn_swrk(
    command: &SwrkCommand,
    helper: Helper,
) -> std::result::Result<libc::pid_t, c_int> {
    let mut status_pipe = [-1; 2];
    // SAFETY: status_pipe has room for two descriptors.
    if unsafe { libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    let [status_read, status_write] = status_pipe;
    // A caller that is a child subreaper would adopt the detached helper when the
    // intermediate child exits, and CRIU refuses to dump a tree it is part of: the
    // flag is off until the intermediate child is reaped.
    let subreaper = helper == Helper::Detached && is_child_subreaper();
    if subreaper {
        // SAFETY: prctl on this process's own flag.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    }
    // A child sharing our memory until it execs copies no page tables, which a fork of
    // a large process spends milliseconds on (twice for the double fork), and leaves the
    // process's pages writable; not when switching users, where glibc would broadcast the
    // change to our threads through the shared memory.
    let shared_stacks =
        (helper == Helper::Detached && command.as_user.is_none()).then(ChildStacks::new).flatten();
    // SAFETY: the child only calls exec_swrk / _exit, which make system calls.
    let first = unsafe {
        match (helper, &shared_stacks) {
            (Helper::Child, _) => libc::fork(),
            (Helper::Detached, Some(stacks)) => {
                spawn_detached_sharing_memory(command, status_read, status_write, stacks)
            }
            (Helper::Detached, None) => clone_process(0),
        }
    };
    if first == 0 {
        // SAFETY: as above; in the child.
        unsafe {
            libc::close(status_read);
            if helper == Helper::Child {
                exec_swrk(command, status_write);
            }
            let second = clone_process(libc::SIGCHLD);
            if second == 0 {
                // Leave the caller's session and process group: until init reaps the
                // exited helper, a member would keep the dumped PID allocated (as its
                // SID/PGID) and a restore in this namespace would fail with EEXIST.
                libc::setsid();
                exec_swrk(command, status_write);
            }
            if second < 0 {
                write_errno(status_write, errno());
                libc::_exit(HELPER_FAILED);
            }
            // The grandchild reports its own exec; its PID is what the parent needs.
            write_pid(status_write, second);
            libc::_exit(0);
        }
    }
    let fork_errno = errno();
    // SAFETY: closing our copy of the write end so that reads see EOF after exec.
    unsafe { libc::close(status_write) };
    if first < 0 {
        if subreaper {
            // SAFETY: prctl on this process's own flag.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        // SAFETY: status_read is ours.
        unsafe { libc::close(status_read) };
        return Err(fork_errno);
    }
    if helper == Helper::Detached {
        // The intermediate child exits at once; reap it now so no zombie is left.
        let mut status = 0;
        // SAFETY: status is a valid out-pointer; __WALL: a child with exit signal 0.
        while unsafe { libc::waitpid(first, &mut status, libc::__WALL) } < 0
            && errno() == libc::EINTR
        {}
    }
    // Both children are gone from our memory: the intermediate exited after the helper
    // exec'd (or failed to).
    drop(shared_stacks);
    if subreaper {
        // SAFETY: prctl on this process's own flag.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let report = read_status_pipe(status_read);
    // SAFETY: status_read is ours.
    unsafe { libc::close(status_read) };
    match (helper, report) {
        (Helper::Child, StatusReport::Exec) => Ok(first),
        (Helper::Detached, StatusReport::Pid(pid)) => Ok(pid),
        (_, failed) => {
            if helper == Helper::Child {
                let _ = wait_exit_code(first);
            }
            Err(match failed {
                StatusReport::Errno(errno) => errno,
                _ => libc::EPROTO,
            })
        }
    }
}

/// Room for the stacks of the two children of a detached spawn that share our memory.
struct ChildStacks {
    base: *mut libc::c_void,
}

/// Per child; they only make system calls.
const CHILD_STACK_SIZE: usize = 64 * 1024;

impl ChildStacks {
    fn new() -> Option<ChildStacks> {
        // SAFETY: a fresh private anonymous mapping.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * CHILD_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        (base != libc::MAP_FAILED).then_some(ChildStacks { base })
    }

    /// The top of stack `index` (0 or 1); stacks grow down.
    fn top(&self, index: usize) -> *mut libc::c_void {
        // SAFETY: within the mapping (its end for index 1).
        unsafe { self.base.cast::<u8>().add((index + 1) * CHILD_STACK_SIZE).cast() }
    }
}

impl Drop for ChildStacks {
    fn drop(&mut self) {
        // SAFETY: our mapping, used by no one any more.
        unsafe { libc::munmap(self.base, 2 * CHILD_STACK_SIZE) };
    }
}

/// What the children of [`spawn_detached_sharing_memory`] need, on the parent's stack.
struct DetachedSpawn<'a> {
    command: &'a SwrkCommand,
    status_read: RawFd,
    status_write: RawFd,
    helper_stack: *mut libc::c_void,
}

/// The double fork of a detached helper with children that share our memory until the
/// helper execs (`CLONE_VM | CLONE_VFORK`, as posix_spawn does): the calling thread
/// waits until the intermediate child has exited, which it does once the helper has
/// exec'd or failed to. Returns the intermediate child's PID (exit signal 0: reaped
/// with `__WALL`) or -1; never returns in a child.
///
/// # Safety
/// As [`spawn_swrk`]; `stacks` stays mapped until the intermediate child is reaped.
unsafe fn spawn_detached_sharing_memory(
    command: &SwrkCommand,
    status_read: RawFd,
    status_write: RawFd,
    stacks: &ChildStacks,
) -> libc::pid_t {
    let spawn = DetachedSpawn { command, status_read, status_write, helper_stack: stacks.top(1) };
    extern "C" fn intermediate(arg: *mut libc::c_void) -> c_int {
        // SAFETY: arg is the DetachedSpawn on the stack of the parent, which waits.
        let spawn = unsafe { &*arg.cast::<DetachedSpawn>() };
        // SAFETY: system calls only; the helper runs on its own stack, and we wait.
        unsafe {
            libc::close(spawn.status_read);
            let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
            let helper = libc::clone(helper_main, spawn.helper_stack, flags, arg);
            if helper < 0 {
                write_errno(spawn.status_write, errno());
                return HELPER_FAILED;
            }
            // The helper reports its own exec; its PID is what the parent needs.
            write_pid(spawn.status_write, helper);
        }
        0
    }
    extern "C" fn helper_main(arg: *mut libc::c_void) -> c_int {
        // SAFETY: as in `intermediate`.
        let spawn = unsafe { &*arg.cast::<DetachedSpawn>() };
        // SAFETY: system calls only, then exec.
        unsafe {
            // Leave the caller's session and process group (see spawn_swrk).
            libc::setsid();
            exec_swrk(spawn.command, spawn.status_write)
        }
    }
    let arg = (&spawn as *const DetachedSpawn).cast_mut().cast();
    // A handler of the program must never run in a child that shares its memory: the
    // children start with every signal blocked, and the helper unblocks them only once
    // every handler is reset (see exec_swrk).
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask fill and swap the
    // calling thread's mask (restored below; pthread_sigmask leaves errno, which the
    // caller reads after a failed clone, alone).
    unsafe {
        let (mut all, mut previous): (libc::sigset_t, libc::sigset_t) = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        // The child runs `intermediate` on its own stack; CLONE_VFORK keeps `spawn`
        // alive until it has exited.
        let pid = libc::clone(intermediate, stacks.top(0), libc::CLONE_VM | libc::CLONE_VFORK, arg);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        pid
    }
}

/// Whether this process is a child subreaper (PR_SET_CHILD_SUBREAPER).
fn is_child_subreaper() -> bool {
    let mut flag: c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer.
    let rc = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut c_int, 0, 0, 0) };
    rc == 0 && flag != 0
}

/// What the status pipe said: nothing (exec succeeded), a PID, or an errno.
enum StatusReport {
    Exec,
    Pid(libc::pid_t),
    Errno(c_int),
    Garbled,
}

const REPORT_PID: u8 = b'P';
const REPORT_ERRNO: u8 = b'E';

fn write_pid(fd: RawFd, pid: libc::pid_t) {
    let [a, b, c, d] = pid.to_ne_bytes();
    let _ = write_all(fd, &[REPORT_PID, a, b, c, d]);
}

fn write_errno(fd: RawFd, errno: c_int) {
    let [a, b, c, d] = errno.to_ne_bytes();
    let _ = write_all(fd, &[REPORT_ERRNO, a, b, c, d]);
}

/// Reads the status pipe to EOF: a detached helper's PID record may be followed by the
/// grandchild's errno record.
fn read_status_pipe(fd: RawFd) -> StatusReport {
    let mut buf = [0u8; 10];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reading into the unused rest of buf.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        match n {
            0 => break,
            n if n > 0 => len += n as usize,
            _ if errno() == libc::EINTR => continue,
            _ => return StatusReport::Garbled,
        }
    }
    let mut report = StatusReport::Exec;
    for record in buf[..len].chunks(5) {
        let &[tag, a, b, c, d] = record else {
            return StatusReport::Garbled;
        };
        let value = i32::from_ne_bytes([a, b, c, d]);
        report = match (tag, report) {
            (REPORT_ERRNO, _) => return StatusReport::Errno(value),
            (REPORT_PID, StatusReport::Exec) => StatusReport::Pid(value),
            _ => return StatusReport::Garbled,
        };
    }
    report
}

/// In the forked helper: restore a clean signal state, let the socket and the inherited
/// descriptors survive exec, exec criu; on failure report errno and exit.
///
/// # Safety
/// Only in a freshly forked child; async-signal-safe.
unsafe fn exec_swrk(command: &SwrkCommand, status_write: RawFd) -> ! {
    // SAFETY: system calls on our own (the child's) signal state and descriptors.
    unsafe {
        // CRIU relies on SIGCHLD; the caller may have it blocked or ignored, and a Rust
        // program ignores SIGPIPE, which exec would otherwise pass on. The program's
        // handlers go before any signal is unblocked: this child may share its memory.
        for signal in 1..=libc::SIGRTMAX() {
            let mut action: libc::sigaction = std::mem::zeroed();
            let caught = libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_DFL
                && action.sa_sigaction != libc::SIG_IGN;
            if caught {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // CRIU may print on stdout ("Looks good." after a check), which belongs to the
        // caller; it keeps it only when stdout is handed over explicitly.
        let stdout_handed_over = command.socket == libc::STDOUT_FILENO
            || command.inherit_fds.contains(&libc::STDOUT_FILENO);
        if !stdout_handed_over {
            let null = libc::open(b"/dev/null\0".as_ptr().cast(), libc::O_WRONLY);
            if null >= 0 && null != libc::STDOUT_FILENO {
                libc::dup2(null, libc::STDOUT_FILENO);
                libc::close(null);
            }
        }
        for &fd in std::iter::once(&command.socket).chain(command.inherit_fds.iter()) {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                write_errno(status_write, errno());
                libc::_exit(HELPER_FAILED);
            }
        }
        if let Some((owner, capabilities)) = &command.as_user {
            if let Err(errno) = owner.become_keeping(capabilities) {
                write_errno(status_write, errno);
                libc::_exit(HELPER_FAILED);
            }
        }
        libc::execve(command.path.as_ptr(), command.argv.as_ptr(), command.envp.as_ptr());
        write_errno(status_write, errno());
        libc::_exit(HELPER_FAILED);
    }
}

/// Capabilities a CRIU dump in unprivileged mode needs.
const DUMP_CAPABILITIES: &[u32] =
    &[crate::owner::CAP_SYS_PTRACE, crate::owner::CAP_CHECKPOINT_RESTORE];

/// Writes all of `bytes`; Err(errno). Async-signal-safe.
pub(crate) fn write_all(fd: RawFd, mut bytes: &[u8]) -> std::result::Result<(), c_int> {
    while !bytes.is_empty() {
        // SAFETY: bytes is a valid buffer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Waits until `fd` can be read from (data, or its other end closed), until `deadline`
/// at most; Ok(false) when the deadline came first.
pub(crate) fn readable_before(fd: RawFd, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so that a wait never ends just before the deadline.
                left.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int
            }
        };
        let mut poll_fd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) } {
            n if n > 0 => return Ok(true),
            0 if deadline.is_some_and(|deadline| Instant::now() >= deadline) => return Ok(false),
            0 => {}
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(err);
                }
            }
        }
    }
}

/// Sends one message on the seqpacket socket. Async-signal-safe.
pub(crate) fn send_message(fd: RawFd, message: &[u8]) -> std::result::Result<(), c_int> {
    loop {
        // SAFETY: message is a valid buffer; MSG_NOSIGNAL: a dead helper gives EPIPE, not SIGPIPE.
        let n =
            unsafe { libc::send(fd, message.as_ptr().cast(), message.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
        // A seqpacket message goes whole or not at all.
        return if n as usize == message.len() { Ok(()) } else { Err(libc::EMSGSIZE) };
    }
}

/// Receives one message into `buffer`; Ok(length). Err(ECONNRESET) if the helper closed
/// the socket without answering, Err(EMSGSIZE) if the message did not fit.
/// Async-signal-safe.
pub(crate) fn receive_message(fd: RawFd, buffer: &mut [u8]) -> std::result::Result<usize, c_int> {
    loop {
        // SAFETY: buffer is valid for writes; MSG_TRUNC returns the real length.
        let n =
            unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_TRUNC) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
        return match n as usize {
            0 => Err(libc::ECONNRESET),
            len if len > buffer.len() => Err(libc::EMSGSIZE),
            len => Ok(len),
        };
    }
}

/// A wait status as one exit code: the code, or 128 + N when killed by signal N.
/// Async-signal-safe.
pub(crate) fn exit_code(status: c_int) -> c_int {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        HELPER_FAILED
    }
}

/// Waits for child `pid` to end; its exit code as `exit_code`.
pub(crate) fn wait_exit_code(pid: libc::pid_t) -> io::Result<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(exit_code(status));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// A private temporary directory (mode 0700), removed when dropped unless kept.
pub(crate) struct TempDir {
    path: Option<PathBuf>,
}

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<TempDir> {
        let template = std::env::temp_dir().join(format!("{prefix}.XXXXXX"));
        let mut template = CString::new(template.as_os_str().as_bytes())
            .map_err(|_| Error::msg("temporary directory path contains a NUL byte"))?
            .into_bytes_with_nul();
        // SAFETY: template is a NUL-terminated, writable buffer ending in XXXXXX.
        if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
            return Err(Error::io("creating a temporary directory", io::Error::last_os_error()));
        }
        template.pop();
        let path = PathBuf::from(OsString::from_vec(template));
        Ok(TempDir { path: Some(path) })
    }

    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().expect("TempDir path is present until kept")
    }

    /// Leaves the directory in place and returns its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.path.take().expect("TempDir path is present until kept")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Scenarios with a real CRIU and real processes (the `selfdump` example program).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::criu::binary;
    use crate::components::criu::restore::{self, RestoreOptions, Restored};
    use std::fs::{File, OpenOptions};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    const LOG_LEVEL: i32 = 4;
    const SIGKILLED: i32 = 128 + libc::SIGKILL;
    const PATIENCE: Duration = Duration::from_secs(10);

    /// CRIU >= 4 and the privilege to use it, or None after saying why the test is skipped.
    fn criu_or_skip(test: &str) -> Option<CriuBinary> {
        let reason = if binary::privileged() {
            match binary::find(None) {
                Ok(bin) => return Some(bin),
                Err(e) => e.to_string(),
            }
        } else {
            "not root".to_string()
        };
        eprintln!("{test}: skipped: needs root and CRIU >= 4 ({reason})");
        None
    }

    /// The `selfdump` example, which `cargo test` builds; built here if missing.
    fn selfdump_program() -> PathBuf {
        let exe = std::env::current_exe().unwrap(); // <target>/debug/deps/<test binary>
        let program = exe.parent().unwrap().parent().unwrap().join("examples/selfdump");
        if !program.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
            let status = Command::new(cargo)
                .args(["build", "--example", "selfdump", "--manifest-path"])
                .arg(manifest)
                .status()
                .unwrap();
            assert!(status.success(), "cargo build --example selfdump");
        }
        program
    }

    /// Where a test program's session is led from.
    #[derive(Clone, Copy, PartialEq)]
    enum Leader {
        /// The program leads a session of its own.
        Itself,
        /// A helper shell leads a fresh session and starts the program in it: a
        /// session that is visible wherever the tests run, even where their own session
        /// leader lies outside the PID namespace (getsid() gives 0 there).
        Helper,
    }

    /// A running `selfdump`: stdin /dev/null, stdout (unless given) and stderr appended
    /// to out.log (O_APPEND: CRIU refuses to restore a regular file that grew otherwise).
    struct Counter {
        child: Child,
        /// The program itself; `child` is its helper shell when `Leader::Helper`.
        pid: i32,
        count_file: PathBuf,
        out_log: PathBuf,
    }

    impl Counter {
        fn start(
            dir: &Path,
            images: Option<&Path>,
            stdout: Option<Stdio>,
            leader: Leader,
        ) -> Counter {
            let count_file = dir.join("count");
            let out_log = dir.join("out.log");
            let pid_file = dir.join("counter.pid");
            let log = OpenOptions::new().create(true).append(true).open(&out_log).unwrap();
            let mut command = match leader {
                Leader::Itself => Command::new(selfdump_program()),
                Leader::Helper => {
                    let mut sh = Command::new("sh");
                    sh.arg("-c")
                        .arg(r#"pid_file=$1; shift; "$@" & echo $! > "$pid_file"; wait"#)
                        .arg("sh")
                        .arg(&pid_file)
                        .arg(selfdump_program());
                    sh
                }
            };
            command.arg(&count_file).args(images);
            command.stdin(Stdio::null());
            command.stdout(stdout.unwrap_or_else(|| log.try_clone().unwrap().into()));
            command.stderr(log);
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
            }
            let child = command.spawn().unwrap();
            let pid = match leader {
                Leader::Itself => child.id() as i32,
                Leader::Helper => {
                    let read = || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok();
                    wait_for("the helper shell to start the program", || read().is_some());
                    read().unwrap()
                }
            };
            Counter { child, pid, count_file, out_log }
        }

        /// Starts the program without images and waits until it has counted to 3.
        fn counting(dir: &Path, stdout: Option<Stdio>, leader: Leader) -> Counter {
            let counter = Counter::start(dir, None, stdout, leader);
            wait_for("the counter to count", || counter.count().is_some_and(|(n, _)| n >= 3));
            counter
        }

        /// Dumps the program with `opts`, which must succeed, kills it and returns its
        /// count at the kill.
        fn dump_and_kill(&mut self, bin: &CriuBinary, opts: &DumpOptions) -> u64 {
            assert_eq!(dump(bin, opts).unwrap(), DumpOutcome::Dumped);
            self.kill();
            self.count().unwrap().0
        }

        fn pid(&self) -> i32 {
            self.pid
        }

        /// The last "N TAG" the program wrote.
        fn count(&self) -> Option<(u64, String)> {
            read_count(&self.count_file)
        }

        fn kill(&mut self) {
            if self.child.try_wait().is_ok_and(|status| status.is_some()) {
                // Reaped: the PID may now be a restored copy's.
                return;
            }
            // SAFETY: self.pid is the program, a child of ours or of our helper shell,
            // which is alive and waits for it, so the PID cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        fn output(&self) -> String {
            std::fs::read_to_string(&self.out_log).unwrap_or_default()
        }
    }

    impl Drop for Counter {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn read_count(path: &Path) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(path).ok()?;
        let (n, tag) = text.trim().split_once(' ')?;
        Some((n.parse().ok()?, tag.to_string()))
    }

    /// A restored task, killed and reaped when dropped.
    struct Running(Option<Restored>);

    impl Running {
        fn get(&self) -> &Restored {
            self.0.as_ref().unwrap()
        }

        fn kill_and_wait(mut self) -> i32 {
            let restored = self.0.take().unwrap();
            // SAFETY: restored.pid is our (grand)child and not yet reaped.
            unsafe { libc::kill(restored.pid, libc::SIGKILL) };
            restored.wait().unwrap()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(restored) = self.0.take() {
                // SAFETY: as in kill_and_wait.
                unsafe { libc::kill(restored.pid, libc::SIGKILL) };
                let _ = restored.wait();
            }
        }
    }

    fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump_options(pid: i32, images_dir: &Path) -> DumpOptions<'_> {
        DumpOptions { log_level: LOG_LEVEL, ..DumpOptions::new(pid, images_dir) }
    }

    fn restore_options<'a>(
        images_dir: &'a Path,
        inherit_fds: &'a [(String, RawFd)],
        new_pidns: bool,
    ) -> RestoreOptions<'a> {
        RestoreOptions {
            images_dir,
            log_file: "restore.log",
            log_level: LOG_LEVEL,
            shell_job: false,
            ext_unix_sk: false,
            tcp_established: false,
            file_locks: false,
            inherit_fds,
            inherit_stdin: None,
            new_pidns,
            before_resume: None,
            timeout: None,
            as_owner: None,
        }
    }

    /// CRIU, a temporary directory and an empty `images` directory in it; None (the test
    /// is skipped, saying why) without root or CRIU.
    fn criu_setup(test: &str) -> Option<(CriuBinary, TempDir, PathBuf)> {
        let bin = criu_or_skip(test)?;
        let dir = TempDir::new("criu-test").unwrap();
        let images = images_in(&dir);
        Some((bin, dir, images))
    }

    fn images_in(dir: &TempDir) -> PathBuf {
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        images
    }

    fn voluntary_switches(pid: i32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn readable_before_waits_until_the_deadline_at_most() {
        let (ours, theirs) = socket_pair().unwrap();
        let started = Instant::now();
        let deadline = Some(started + Duration::from_millis(80));
        assert!(!readable_before(ours.as_raw_fd(), deadline).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(80));
        send_message(theirs.as_raw_fd(), b"answer").unwrap();
        assert!(readable_before(ours.as_raw_fd(), deadline).unwrap(), "data counts");
        let (ours, theirs) = socket_pair().unwrap();
        drop(theirs);
        assert!(readable_before(ours.as_raw_fd(), None).unwrap(), "so does a closed peer");
    }

    #[test]
    fn wait_status_becomes_one_exit_code() {
        assert_eq!(exit_code(3 << 8), 3, "exited with 3");
        assert_eq!(exit_code(libc::SIGKILL), SIGKILLED, "killed by SIGKILL");
        assert_eq!(exit_code(libc::SIGSEGV | 0x80), 128 + libc::SIGSEGV, "core dumped");
    }

    /// Minor faults of the calling thread so far.
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage fills the struct.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            usage.ru_minflt
        }
    }

    #[test]
    fn a_detached_helper_leaves_the_process_memory_alone() {
        let Some(bin) = criu_or_skip("a_detached_helper_leaves_the_process_memory_alone") else {
            return;
        };
        const PAGES: usize = 8192;
        // Counted in a child of one thread: a fork by another test's thread would make
        // this process's pages copy-on-write as well.
        let (read_end, write_end) = socket_pair().unwrap();
        // SAFETY: the child only runs the measurement (glibc's fork leaves its allocator
        // usable) and ends with _exit.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let mut memory = vec![0u8; PAGES * 4096];
            // SAFETY: advice on our own buffer; small pages, so each one faults alone.
            unsafe {
                libc::madvise(memory.as_mut_ptr().cast(), memory.len(), libc::MADV_NOHUGEPAGE)
            };
            let touch = |memory: &mut [u8], value: u8| {
                let before = thread_minor_faults();
                for page in memory.chunks_mut(4096) {
                    page[0] = value;
                }
                thread_minor_faults() - before
            };
            touch(&mut memory, 1);
            let session = Session::start(&bin, Helper::Detached, &[], None);
            // A fork would have made every page copy-on-write: each write faults again.
            let faults = if session.is_ok() { touch(&mut memory, 2) } else { -1 };
            drop(session);
            let _ = send_message(write_end.as_raw_fd(), &faults.to_ne_bytes());
            // SAFETY: ends the forked child without running the test harness's exit.
            unsafe { libc::_exit(0) };
        }
        drop(write_end);
        let mut buffer = [0u8; 8];
        let len = receive_message(read_end.as_raw_fd(), &mut buffer);
        assert_eq!(wait_exit_code(child).unwrap(), 0);
        assert_eq!(len, Ok(8));
        let faults = i64::from_ne_bytes(buffer);
        assert!(faults >= 0, "the helper did not start");
        assert!(
            faults < PAGES as i64 / 10,
            "{faults} faults writing {PAGES} pages after the spawn"
        );
    }

    #[test]
    fn check_passes() {
        let Some(bin) = criu_or_skip("check_passes") else {
            return;
        };
        let started = Instant::now();
        bin.check().unwrap();
        eprintln!("measured: criu check through swrk {:?}", started.elapsed());
        let started = Instant::now();
        bin.check().unwrap();
        assert!(started.elapsed() < Duration::from_millis(10), "second check is cached");
    }

    #[test]
    fn dump_kill_restore_in_same_namespace() {
        let Some((bin, dir, images)) = criu_setup("dump_kill_restore_in_same_namespace") else {
            return;
        };
        let mut counter = Counter::counting(dir.path(), None, Leader::Itself);
        let pid = counter.pid();

        let started = Instant::now();
        let at_kill = counter.dump_and_kill(&bin, &dump_options(pid, &images));
        let dump_time = started.elapsed();
        assert_eq!(restore::image_pids(&images).unwrap(), [pid]);
        assert!(!restore::pid_in_use(pid));

        let started = Instant::now();
        let running =
            Running(Some(restore::restore(&bin, &restore_options(&images, &[], false)).unwrap()));
        let restore_time = started.elapsed();
        let restored = running.get();
        assert_eq!((restored.pid, restored.pid_in_ns, restored.new_pidns), (pid, pid, false));
        wait_for("the restored copy to count on", || {
            counter.count().is_some_and(|(n, _)| n > at_kill + 2)
        });
        eprintln!("measured: dump {dump_time:?}, restore {restore_time:?} (same namespace)");
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn a_held_tree_runs_only_after_its_check_passes_and_dies_when_it_fails() {
        let Some((bin, dir, images)) =
            criu_setup("a_held_tree_runs_only_after_its_check_passes_and_dies_when_it_fails")
        else {
            return;
        };
        let mut counter = Counter::counting(dir.path(), None, Leader::Itself);
        let pid = counter.pid();
        let at_kill = counter.dump_and_kill(&bin, &dump_options(pid, &images));
        let written = || std::fs::metadata(&counter.count_file).unwrap().modified().unwrap();
        let last_write = written();

        let refuse = |held: &Restored| -> crate::error::Result<()> {
            assert_eq!(held.pid, pid);
            Err(Error::msg("refused by the test"))
        };
        let opts =
            RestoreOptions { before_resume: Some(&refuse), ..restore_options(&images, &[], false) };
        let err = restore::restore(&bin, &opts).unwrap_err();
        assert_eq!(err.message(), "refused by the test");
        assert!(!restore::pid_in_use(pid), "the refused tree is still there");
        assert_eq!(written(), last_write, "the refused task counted");

        let checked = std::cell::Cell::new(false);
        let hold = |held: &Restored| -> crate::error::Result<()> {
            assert!(restore::pid_in_use(held.pid));
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(written(), last_write, "the held task counted");
            checked.set(true);
            Ok(())
        };
        let opts =
            RestoreOptions { before_resume: Some(&hold), ..restore_options(&images, &[], false) };
        let running = Running(Some(restore::restore(&bin, &opts).unwrap()));
        assert!(checked.get());
        wait_for("the released copy to count on", || {
            counter.count().is_some_and(|(n, _)| n > at_kill)
        });
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn restore_while_original_runs_needs_new_pid_namespace() {
        let Some((bin, dir, images)) =
            criu_setup("restore_while_original_runs_needs_new_pid_namespace")
        else {
            return;
        };
        let counter = Counter::counting(dir.path(), None, Leader::Itself);
        let pid = counter.pid();
        assert_eq!(dump(&bin, &dump_options(pid, &images)).unwrap(), DumpOutcome::Dumped);

        let err = restore::restore(&bin, &restore_options(&images, &[], false)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_EXISTS, "{err}");
        assert!(err.message().contains(&format!("PID [{pid}] still in use")), "{err}");

        let started = Instant::now();
        let running =
            Running(Some(restore::restore(&bin, &restore_options(&images, &[], true)).unwrap()));
        let restore_time = started.elapsed();
        let restored = running.get();
        assert!(restored.new_pidns);
        assert_ne!(restored.pid, pid);
        assert_eq!(restored.pid_in_ns, pid);
        let ns_pids = restore::ns_pids(restored.pid);
        assert_eq!((ns_pids.first(), ns_pids.last()), (Some(&restored.pid), Some(&pid)));
        let before = (voluntary_switches(pid).unwrap(), voluntary_switches(restored.pid).unwrap());
        wait_for("both copies to run", || {
            let now = (
                voluntary_switches(pid).unwrap_or(0),
                voluntary_switches(restored.pid).unwrap_or(0),
            );
            now.0 > before.0 + 2 && now.1 > before.1 + 2
        });
        eprintln!("measured: restore into a new PID namespace {restore_time:?}");
        drop(counter);
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn self_dump_restored_copy_learns_it_was_restored() {
        let Some((bin, dir, images)) = criu_setup("self_dump_restored_copy_learns_it_was_restored")
        else {
            return;
        };
        let mut counter = Counter::start(dir.path(), Some(&images), None, Leader::Itself);
        let pid = counter.pid();
        wait_for("the self-dump", || {
            counter.count().is_some_and(|(n, tag)| n >= 2 && tag == "dumped")
        });
        assert!(counter.output().starts_with("dumped\n"), "{}", counter.output());
        assert_eq!(
            restore::image_pids(&images).unwrap(),
            [pid],
            "no helper or zombie in the image"
        );
        counter.kill();

        let running =
            Running(Some(restore::restore(&bin, &restore_options(&images, &[], false)).unwrap()));
        assert_eq!(running.get().pid, pid);
        wait_for("the restored copy to count", || {
            counter.count().is_some_and(|(n, tag)| n >= 3 && tag == "restored")
        });
        assert!(counter.output().lines().any(|line| line == "restored"), "{}", counter.output());
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn stdout_pipe_is_handed_over_with_inherit_fd() {
        let Some((bin, dir, images)) = criu_setup("stdout_pipe_is_handed_over_with_inherit_fd")
        else {
            return;
        };
        let mut counter = Counter::counting(dir.path(), Some(Stdio::piped()), Leader::Itself);
        let pid = counter.pid();
        let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
        let pipe_key = stdout.to_str().unwrap().to_string();
        assert!(pipe_key.starts_with("pipe:["), "{pipe_key}");
        assert_eq!(dump(&bin, &dump_options(pid, &images)).unwrap(), DumpOutcome::Dumped);
        counter.kill();

        // Without inherit_fd the task gets a pipe nobody reads: its next write fails
        // (EPIPE, as Rust programs ignore SIGPIPE) and println! panics: exit code 101.
        let lost = restore::restore(&bin, &restore_options(&images, &[], false)).unwrap();
        assert_eq!(lost.wait().unwrap(), 101);

        let (reader, writer) = {
            let mut fds = [-1; 2];
            // SAFETY: fds has room for two descriptors, which we then own.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let inherit = [(pipe_key, writer.as_raw_fd())];
        let running = Running(Some(
            restore::restore(&bin, &restore_options(&images, &inherit, false)).unwrap(),
        ));
        drop(writer);
        let mut line = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(reader), &mut line).unwrap();
        assert!(line.ends_with(" counting\n"), "{line:?}");
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn a_log_gives_its_real_errors_without_criu_s_noise() {
        let dir = TempDir::new("criu-log-test").unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.001) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: \
             Operation not permitted\n\
             (00.002) Warn  (criu/x.c:1): a warning\n\
             (00.003) Error (criu/file-lock.c:93): Some file locks are hold by dumping tasks!\n\
             (00.004) Error (criu/cr-dump.c:1545): Dump files (pid: 42) failed with -1\n\
             (00.005) Error (criu/cr-dump.c:1975): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(
            first_log_errors(&log),
            ["Error (criu/file-lock.c:93): Some file locks are hold by dumping tasks!"]
        );
    }

    #[test]
    fn stdout_socket_is_declared_external_and_handed_over() {
        let test = "stdout_socket_is_declared_external_and_handed_over";
        let Some((bin, dir, images)) = criu_setup(test) else {
            return;
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stdout = Stdio::from(OwnedFd::from(theirs));
        let mut counter = Counter::counting(dir.path(), Some(stdout), Leader::Itself);
        let pid = counter.pid();
        let socket = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
        let socket_key = socket.to_str().unwrap().to_string();
        let inode = socket_key.strip_prefix("socket:[").unwrap().trim_end_matches(']');

        // CRIU refuses a connection whose other end is outside the dumped tree...
        let err = dump(&bin, &dump_options(pid, &images)).unwrap_err();
        assert!(err.message().contains("External socket is used"), "{err}");
        // ...unless it is declared external; on restore it must be handed over.
        let external = [format!("unix[{inode}]")];
        let opts = DumpOptions { external: &external, ..dump_options(pid, &images) };
        assert_eq!(dump(&bin, &opts).unwrap(), DumpOutcome::Dumped);
        counter.kill();
        drop(ours);

        let (reader, writer) = UnixStream::pair().unwrap();
        let inherit = [(socket_key, writer.as_raw_fd())];
        let restored = restore::restore(&bin, &restore_options(&images, &inherit, false));
        let running = Running(Some(restored.unwrap()));
        drop(writer);
        let mut line = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(reader), &mut line).unwrap();
        assert!(line.ends_with(" counting\n"), "{line:?}");
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn self_dump_restored_beside_its_original() {
        let Some((bin, dir, images)) = criu_setup("self_dump_restored_beside_its_original") else {
            return;
        };
        let mut counter = Counter::start(dir.path(), Some(&images), None, Leader::Itself);
        wait_for("the self-dump", || counter.count().is_some_and(|(_, tag)| tag == "dumped"));

        let restored = restore::restore(&bin, &restore_options(&images, &[], true));
        let running = Running(Some(restored.unwrap()));
        assert_eq!(running.get().pid_in_ns, counter.pid());
        wait_for("the restored copy to say so", || {
            counter.output().lines().any(|l| l == "restored")
        });
        assert!(counter.child.try_wait().unwrap().is_none(), "the original still runs");
        counter.kill();
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn dump_failure_names_criu_error_and_log() {
        let Some((bin, dir, images)) = criu_setup("dump_failure_names_criu_error_and_log") else {
            return;
        };
        // Not a session leader and no shell_job: CRIU refuses.
        let counter = Counter::start(dir.path(), None, None, Leader::Helper);
        wait_for("the counter to count", || counter.count().is_some());
        let err = dump(&bin, &dump_options(counter.pid(), &images)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERROR);
        let log = images.join("dump.log");
        assert!(err.message().contains(&format!("log {}", log.display())), "{err}");
        assert!(err.message().contains("is not a session leader"), "{err}");
        assert!(!err.message().contains(HARMLESS_ERROR), "{err}");
    }

    #[test]
    fn shell_job_dumps_and_restores_a_process_of_our_session() {
        let test = "shell_job_dumps_and_restores_a_process_of_our_session";
        let Some((bin, dir, images)) = criu_setup(test) else {
            return;
        };
        let mut counter = Counter::counting(dir.path(), None, Leader::Helper);
        let pid = counter.pid();
        let opts = DumpOptions { shell_job: true, ..dump_options(pid, &images) };
        let at_kill = counter.dump_and_kill(&bin, &opts);

        let opts = RestoreOptions { shell_job: true, ..restore_options(&images, &[], false) };
        let running = Running(Some(restore::restore(&bin, &opts).unwrap()));
        wait_for("the restored copy to count on", || {
            counter.count().is_some_and(|(n, _)| n > at_kill)
        });
        // SAFETY: getsid has no preconditions.
        let (ours, its) = unsafe { (libc::getsid(0), libc::getsid(running.get().pid)) };
        assert_eq!(its, ours, "restored into our session");
        assert_eq!(running.kill_and_wait(), SIGKILLED);
    }

    #[test]
    fn missing_images_dir_is_a_clear_error() {
        let Some(bin) = criu_or_skip("missing_images_dir_is_a_clear_error") else {
            return;
        };
        let missing = Path::new("/nonexistent/images");
        let err = dump(&bin, &dump_options(std::process::id() as i32, missing)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert!(err.message().starts_with("CRIU images directory /nonexistent/images: "), "{err}");
        let err = restore::restore(&bin, &restore_options(missing, &[], false)).unwrap_err();
        assert!(err.message().starts_with("CRIU images directory /nonexistent/images: "), "{err}");
    }

    #[test]
    fn bad_arguments_are_refused_before_criu_runs() {
        let bin = CriuBinary { path: PathBuf::from("/nonexistent/criu"), version: (4, 1, 1) };
        let dir = TempDir::new("criu-test").unwrap();
        let mut opts = dump_options(std::process::id() as i32, dir.path());
        opts.log_file = "logs/dump.log";
        assert_eq!(dump(&bin, &opts).unwrap_err().code(), codes::OPAL_ERR_BAD_PARAM);
        opts.log_file = "dump.log";
        opts.pid = 0;
        assert_eq!(dump(&bin, &opts).unwrap_err().code(), codes::OPAL_ERR_BAD_PARAM);
        let err = restore::restore(&bin, &restore_options(dir.path(), &[], false)).unwrap_err();
        assert!(err.message().contains("no CRIU images in"), "{err}");
    }

    #[test]
    fn missing_criu_binary_fails_to_start() {
        let bin = CriuBinary { path: PathBuf::from("/nonexistent/criu"), version: (4, 1, 1) };
        let dir = TempDir::new("criu-test").unwrap();
        let err = dump(&bin, &dump_options(std::process::id() as i32, dir.path())).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_AVAILABLE);
        assert_eq!(
            err.message(),
            "cannot start /nonexistent/criu swrk: No such file or directory (os error 2)"
        );
        let err = bin.check().unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_AVAILABLE);
    }
}

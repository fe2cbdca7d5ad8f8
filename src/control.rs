//! The control protocol between `opal-checkpoint` and a process: one JSON line each
//! way per connection over a Unix stream socket bound to an abstract name
//! `opalcrs.<pid>.<unique>`. The tool finds the socket from the PID alone, through the
//! socket inodes of `/proc/PID/fd` matched against `/proc/PID/net/unix` (so it works
//! across users, private TMPDIRs and PID namespaces), and both ends check each other's
//! credentials with SO_PEERCRED.

use crate::codes::*;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

pub const PROTOCOL_VERSION: u32 = 1;
pub const NAME_PREFIX: &str = "opalcrs.";
const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Checkpoint {
        #[serde(default)]
        term: bool,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        dir: Option<String>,
        /// Queue behind a running checkpoint instead of being refused.
        #[serde(default)]
        wait: bool,
        /// A privileged tool's rendezvous directory: where a process that may not run
        /// CRIU itself asks the tool to dump it (`components::criu::behalf`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dump_helper: Option<String>,
        /// Sent by a job's launcher (`job::endpoint`): once the snapshot is published,
        /// answer with its result on this same connection and run the continue phase
        /// only after the launcher's go (a line), so that no rank continues before all
        /// have finished. Old tools leave it out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
    },
    /// The result of checkpoint `id`; answered when it is known.
    Result {
        id: u64,
    },
    Status,
    /// Sent by an ancestor that is about to dump its whole tree (criu): close the
    /// control socket now, so that no restored copy of the tree binds the name this
    /// process still holds, and bind anew once `dumper` is no longer dumping: once its
    /// thread `until_ends` has ended when named (a look that opens no file, so none can
    /// be caught open in the dump), else once no thread of `dumper` carries
    /// [`DUMP_THREAD_NAME`].
    Quiet {
        dumper: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ends: Option<i32>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestEnvelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// Why a request failed; each kind has its own exit code in the tool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InProgress,
    NotCheckpointable,
    PermissionDenied,
    ComponentFailed,
    BadRequest,
    UnknownId,
}

impl ErrorKind {
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::InProgress => OPAL_ERR_RESOURCE_BUSY,
            ErrorKind::NotCheckpointable => OPAL_ERR_NOT_SUPPORTED,
            ErrorKind::PermissionDenied => OPAL_ERR_PERM,
            ErrorKind::ComponentFailed => OPAL_ERROR,
            ErrorKind::BadRequest | ErrorKind::UnknownId => OPAL_ERR_BAD_PARAM,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

/// The outcome of one checkpoint, as the process saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointResult {
    pub seq: u64,
    pub series: String,
    pub path: String,
    pub component: String,
    /// "continue" or "term".
    pub state: String,
    /// Milliseconds from the request being taken to: running, locally finished, established.
    pub running_ms: f64,
    pub finished_ms: f64,
    pub established_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pid: i32,
    pub component: String,
    /// "idle" or "checkpointing".
    pub state: String,
    pub series: Option<String>,
    pub last_seq: Option<u64>,
    pub last_path: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CheckpointResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            error: Some(ErrorBody { kind, message: message.into() }),
            ..Reply::default()
        }
    }
}

/// Reads one JSON line (bounded) and decodes it.
pub fn read_message<T: for<'de> Deserialize<'de>>(stream: &UnixStream) -> std::io::Result<T> {
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, MAX_LINE)).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without a message",
        ));
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A request being received by a server that must not wait for any one client: the
/// stream is non-blocking and the whole line must arrive before `deadline`.
pub struct PendingRequest {
    stream: UnixStream,
    /// The connecting process, so that one process's connections cannot crowd out
    /// another's.
    peer: i32,
    line: Vec<u8>,
    deadline: Instant,
}

/// What a [`PendingRequest`] has received so far.
#[derive(Debug)]
pub enum Received {
    /// Not a whole line yet.
    Partial,
    /// A whole line, decoded, or why it cannot be.
    Request(std::result::Result<RequestEnvelope, String>),
    /// The client went away before sending anything.
    Gone,
}

impl PendingRequest {
    pub fn new(
        stream: UnixStream,
        peer: i32,
        deadline: Instant,
    ) -> std::io::Result<PendingRequest> {
        stream.set_nonblocking(true)?;
        Ok(PendingRequest { stream, peer, line: Vec::new(), deadline })
    }

    pub fn peer(&self) -> i32 {
        self.peer
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Reads what has arrived, without blocking.
    pub fn receive(&mut self) -> Received {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.line.iter().position(|&b| b == b'\n') {
                let decoded = serde_json::from_slice(&self.line[..end])
                    .map_err(|e| format!("unreadable request: {e}"));
                return Received::Request(decoded);
            }
            if self.line.len() as u64 > MAX_LINE {
                return Received::Request(Err(format!(
                    "request longer than {MAX_LINE} bytes (is a name or path that long?)"
                )));
            }
            match (&self.stream).read(&mut chunk) {
                Ok(0) if self.line.is_empty() => return Received::Gone,
                Ok(0) => {
                    return Received::Request(Err(
                        "unreadable request: the connection closed before its end of line".into(),
                    ))
                }
                Ok(n) => self.line.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Received::Partial,
                Err(_) => return Received::Gone,
            }
        }
    }
}

pub fn write_message<T: Serialize>(mut stream: &UnixStream, message: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Credentials of the other end of a Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
}

/// The uid that users not mapped into this process's user namespace appear as
/// (`/proc/sys/kernel/overflowuid`, 65534 unless changed), if any user can be unmapped
/// here: None in a namespace that maps every uid (the initial one), where a client of
/// that uid is that user (`nobody`).
pub fn overflow_uid() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let maps_every_uid = map.lines().any(|line| {
        line.split_whitespace().nth(2).and_then(|n| n.parse::<u64>().ok())
            == Some(u64::from(u32::MAX))
    });
    if maps_every_uid {
        return None;
    }
    let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid").ok();
    Some(overflow.and_then(|text| text.trim().parse().ok()).unwrap_or(65534))
}

/// Why the client at the other end of `stream` may not act on this process (`what`:
/// "a process", "a job"), or None if it may: the process's own user and root only, and
/// never a client whose uid the user namespace cannot map (it reads as `overflow`, as
/// every other unmapped user does, and as this process does without a map of its own).
pub fn refusal(stream: &UnixStream, overflow: Option<u32>, what: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    match peer_cred(stream) {
        Ok(cred) if Some(cred.uid) == overflow => Some(format!(
            "permission denied: the client's uid is not mapped into the user namespace of process {}, which cannot tell it from other users",
            std::process::id()
        )),
        Ok(cred) if cred.uid == 0 || cred.uid == own_uid => None,
        Ok(cred) => Some(format!(
            "permission denied: uid {} may not checkpoint {what} of uid {own_uid}",
            cred.uid
        )),
        Err(e) => Some(format!("cannot check the peer's credentials: {e}")),
    }
}

pub fn peer_cred(stream: &UnixStream) -> std::io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCred { pid: cred.pid, uid: cred.uid })
}

/// Binds the process's listening socket under a fresh abstract name.
pub fn bind(pid: i32) -> std::io::Result<(UnixListener, String)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("{NAME_PREFIX}{pid}.{nanos:x}");
    let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    Ok((listener, name))
}

/// A process's control endpoint, found from its PID.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub pid: i32,
    pub uid: u32,
    pub name: String,
}

/// Finds the control socket of `pid`. Errors: OPAL_ERR_NOT_FOUND (no such process),
/// OPAL_ERR_PERM (not ours to inspect), OPAL_ERR_RESOURCE_BUSY (closed while the
/// process is dumped), OPAL_ERR_NOT_AVAILABLE (no libopalcrs socket).
pub fn locate(pid: i32) -> Result<Endpoint> {
    if pid <= 0 {
        return Err(Error::new(OPAL_ERR_BAD_PARAM, format!("invalid PID {pid}")));
    }
    let proc_dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{proc_dir}/status"))
        .map_err(|_| Error::new(OPAL_ERR_NOT_FOUND, format!("no such process: {pid}")))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
        return Err(Error::new(
            OPAL_ERR_NOT_FOUND,
            format!("no such process: {pid} has exited (zombie)"),
        ));
    }
    // Readable only for the process's owner and root.
    std::fs::read_dir(format!("{proc_dir}/fd")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            Error::new(
                OPAL_ERR_PERM,
                format!("permission denied: process {pid} belongs to uid {uid}"),
            )
        } else {
            Error::new(OPAL_ERR_NOT_FOUND, format!("no such process: {pid} ({e})"))
        }
    })?;
    let not_ours = || {
        Error::new(
            OPAL_ERR_NOT_AVAILABLE,
            format!("process {pid} is not a libopalcrs process (no control socket: not linked with libopalcrs, C/R disabled, or opal_init not called)"),
        )
    };
    // The dump marker is set before the socket closes and cleared after it reopens, so
    // "no socket, then no marker" means the socket reopened meanwhile: look again.
    for _ in 0..3 {
        if let Some(name) = listening_name(pid)? {
            return Ok(Endpoint { pid, uid, name });
        }
        if being_dumped(pid) {
            return Err(Error::new(
                OPAL_ERR_RESOURCE_BUSY,
                format!("a checkpoint of process {pid} is in progress (its control socket is closed while it is dumped)"),
            ));
        }
    }
    Err(not_ours())
}

/// The abstract name of the control socket `pid` listens on, if any.
fn listening_name(pid: i32) -> Result<Option<String>> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy();
            if let Some(ino) = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(ino.to_string());
            }
        }
    }
    if inodes.is_empty() {
        return Ok(None);
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .map_err(|e| Error::io("reading /proc/net/unix", e))?;
    // Columns: Num RefCount Protocol Flags Type St Inode [Path]; abstract names start with '@'.
    Ok(table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (flags, inode, path) = (cols.get(3)?, cols.get(6)?, cols.get(7)?);
        let listening = u32::from_str_radix(flags, 16).ok()? & 0x10000 != 0;
        let name = path.strip_prefix('@')?;
        (listening && name.starts_with(NAME_PREFIX) && inodes.contains(*inode))
            .then(|| name.to_string())
    }))
}

/// The name of the thread that runs a whole-process dump while the process's control
/// socket is closed for it: a tool that finds no socket but this thread knows that a
/// checkpoint is in progress. A thread's name is the process's own (no other user can
/// set it), costs CRIU nothing, and is given back before the socket reopens, in the
/// original and in a restored copy alike.
pub const DUMP_THREAD_NAME: &str = "opalcrs-dump";

/// The name of the thread that watches, in a forked child that has not exec'd, for its
/// parent's exit (src/capi/preload.rs).
pub(crate) const WATCHER_THREAD_NAME: &std::ffi::CStr = c"opalcrs-watch";

/// How long a dump waits for the watchers of confined children to leave (they look
/// every 100 ms).
const WATCHER_SETTLE: Duration = Duration::from_millis(500);

/// Waits until no child below us that confined itself with seccomp still has its
/// watcher thread: the watcher leaves such a child within its poll, but a dump taken
/// before gives CRIU threads with different filters, which it restores as separate
/// filters, and a later `SECCOMP_FILTER_FLAG_TSYNC` of the program fails (zdtm
/// `seccomp_filter_tsync`). Runs before the dump, while nothing is frozen.
fn settle_watchers(pids: &[i32]) {
    let watcher_name = WATCHER_THREAD_NAME.to_str().expect("an ASCII name");
    let seccomp = |pid: i32, tid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"));
        status
            .ok()
            .map(|s| s.lines().filter(|l| l.starts_with("Seccomp")).collect::<Vec<_>>().join("\n"))
    };
    let unsettled = |pid: i32| {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks.filter_map(|task| task.file_name().to_str()?.parse::<i32>().ok()).any(|tid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
            name.is_ok_and(|n| n.trim_end() == watcher_name)
                && seccomp(pid, tid).is_some_and(|own| seccomp(pid, pid) != Some(own))
        })
    };
    let started = Instant::now();
    for &pid in pids {
        while unsettled(pid) && started.elapsed() < WATCHER_SETTLE {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether thread `tid` of process `pid` still exists (a signal 0 opens no file).
pub fn thread_exists(pid: i32, tid: i32) -> bool {
    // SAFETY: tgkill with signal 0 only checks that the thread exists and may be signalled.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether a thread of `pid` carries [`DUMP_THREAD_NAME`].
pub fn being_dumped(pid: i32) -> bool {
    dump_thread(pid).is_some()
}

/// The thread of `pid` that carries [`DUMP_THREAD_NAME`], if any.
fn dump_thread(pid: i32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks.into_iter().find_map(|task| {
        let tid = task.file_name().to_str()?.parse().ok()?;
        carries_dump_name(pid, tid).then_some(tid)
    })
}

fn carries_dump_name(pid: i32, tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .is_ok_and(|comm| comm.trim_end_matches('\n') == DUMP_THREAD_NAME)
}

/// Waits at most `limit` for the thread of `pid` that carries [`DUMP_THREAD_NAME`] to
/// end: a checkpoint thread ends as soon as the process has its control socket again,
/// so a tool that waits here learns the result without polling in between. Returns at
/// once when that thread no longer carries the name, and waits all of `limit` when no
/// thread does or the thread cannot be waited for (a pidfd of a thread needs Linux 6.9;
/// the listener thread, quiet for an ancestor's dump, carries the name and lives on).
pub fn await_dump_thread(pid: i32, limit: Duration) {
    let started = Instant::now();
    let Some(tid) = dump_thread(pid) else {
        std::thread::sleep(limit);
        return;
    };
    // PIDFD_THREAD (= O_EXCL): a descriptor of this thread, not of its process.
    // SAFETY: pidfd_open takes a TID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, libc::O_EXCL) };
    let Some(fd) = i32::try_from(fd).ok().filter(|&fd| fd >= 0) else {
        std::thread::sleep(limit);
        return;
    };
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // The TID may have been reused between the scan and the open: check the name again.
    if carries_dump_name(pid, tid) {
        let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let left = limit.saturating_sub(started.elapsed());
        let timeout = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd; a thread's pidfd is readable once the thread ended.
        unsafe { libc::poll(&mut poll, 1, timeout) };
    }
}

/// Asks every libopalcrs process below `root` to close its control socket while `root`
/// dumps the tree (see [`Request::Quiet`]). Returns once each has answered and closed
/// its end of the connection, or could not be reached; says how many were quieted.
pub fn quiet_descendants(root: i32, until_ends: Option<i32>) -> usize {
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(children(tree[next]));
        next += 1;
    }
    settle_watchers(&tree[1..]);
    let timeout = Duration::from_secs(2);
    let mut quieted = 0;
    for &pid in &tree[1..] {
        let Ok(endpoint) = locate(pid) else { continue };
        let asked = endpoint.connect(timeout).and_then(|stream| {
            let request = RequestEnvelope {
                v: PROTOCOL_VERSION,
                request: Request::Quiet { dumper: root, until_ends },
            };
            write_message(&stream, &request)?;
            read_message::<Reply>(&stream)?;
            // The process closes its end too: no connection may be left for the dump.
            let mut rest = Vec::new();
            (&stream).read_to_end(&mut rest)?;
            Ok(())
        });
        match asked {
            Ok(()) => quieted += 1,
            Err(e) => log::debug!(target: "cr", "cr: process {pid} below {root} not quieted: {e}"),
        }
    }
    quieted
}

/// The nearest ancestor of this process that is dumping its tree right now, if any: a
/// process starting below it must not bind a control socket until the dump is over.
pub fn dumping_ancestor() -> Option<i32> {
    // SAFETY: getppid has no preconditions.
    let mut pid = unsafe { libc::getppid() };
    while pid > 1 {
        if being_dumped(pid) {
            return Some(pid);
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        pid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()?;
    }
    None
}

/// The children of `pid`, from every thread's list in /proc.
fn children(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect()
}

/// The calling thread carries [`DUMP_THREAD_NAME`] until this is dropped.
pub struct DumpMarker {
    previous: [u8; 16],
}

impl DumpMarker {
    pub fn set() -> DumpMarker {
        let mut previous = [0u8; 16];
        let name = std::ffi::CString::new(DUMP_THREAD_NAME).expect("no NUL in the name");
        // SAFETY: PR_GET_NAME writes at most 16 bytes into our buffer; PR_SET_NAME
        // reads a NUL-terminated string of at most 16 bytes.
        unsafe {
            libc::prctl(libc::PR_GET_NAME, previous.as_mut_ptr());
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        }
        DumpMarker { previous }
    }
}

impl Drop for DumpMarker {
    fn drop(&mut self) {
        // SAFETY: the NUL-terminated name PR_GET_NAME gave.
        unsafe { libc::prctl(libc::PR_SET_NAME, self.previous.as_ptr()) };
    }
}

impl Endpoint {
    /// Connects and checks that the listener really is the target process.
    pub fn connect(&self, timeout: Duration) -> std::io::Result<UnixStream> {
        let stream =
            UnixStream::connect_addr(&SocketAddr::from_abstract_name(self.name.as_bytes())?)?;
        let cred = peer_cred(&stream)?;
        if cred.pid != self.pid || cred.uid != self.uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "control socket {} is held by pid {} uid {}, not by the target",
                    self.name, cred.pid, cred.uid
                ),
            ));
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }

    /// One request, one reply.
    pub fn call(&self, request: Request, timeout: Duration) -> std::io::Result<Reply> {
        let stream = self.connect(timeout)?;
        write_message(&stream, &RequestEnvelope { v: PROTOCOL_VERSION, request })?;
        read_message(&stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_waits_for_the_end_of_the_dump_thread_and_no_longer() {
        let own = std::process::id() as i32;
        let started = Instant::now();
        await_dump_thread(own, Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50), "no dump thread: waits the limit");
        let (marked_tx, marked_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _marker = DumpMarker::set();
            marked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        marked_rx.recv().unwrap();
        let started = Instant::now();
        await_dump_thread(own, Duration::from_secs(20));
        let waited = started.elapsed();
        worker.join().unwrap();
        assert!(
            waited >= Duration::from_millis(250),
            "returned before the thread ended: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "waited {waited:?} for a thread that ended after 0.3 s"
        );
    }

    #[test]
    fn the_initial_user_namespace_has_no_unmapped_clients() {
        // The tests run in the initial namespace (its map covers every uid).
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        if map.split_whitespace().nth(2) == Some("4294967295") {
            assert_eq!(overflow_uid(), None);
        }
    }

    #[test]
    fn requests_round_trip_and_carry_the_version() {
        let request = RequestEnvelope {
            v: PROTOCOL_VERSION,
            request: Request::Checkpoint {
                term: true,
                name: Some("n".into()),
                dir: None,
                wait: false,
                dump_helper: Some("/tmp/opalcrs-dump-1-ab".into()),
                hold: true,
            },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains("\"op\":\"checkpoint\"") && text.contains("\"v\":1"), "{text}");
        assert_eq!(serde_json::from_str::<RequestEnvelope>(&text).unwrap(), request);
        let minimal: RequestEnvelope =
            serde_json::from_str(r#"{"v":1,"op":"checkpoint"}"#).unwrap();
        assert_eq!(
            minimal.request,
            Request::Checkpoint {
                term: false,
                name: None,
                dir: None,
                wait: false,
                dump_helper: None,
                hold: false
            }
        );
        assert!(serde_json::from_str::<RequestEnvelope>(r#"{"v":1,"op":"explode"}"#).is_err());
    }

    #[test]
    fn a_quiet_request_names_the_dumper() {
        let request = RequestEnvelope {
            v: PROTOCOL_VERSION,
            request: Request::Quiet { dumper: 42, until_ends: None },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"v":1,"op":"quiet","dumper":42}"#);
        assert_eq!(serde_json::from_str::<RequestEnvelope>(&text).unwrap(), request);
        let request = RequestEnvelope {
            v: PROTOCOL_VERSION,
            request: Request::Quiet { dumper: 42, until_ends: Some(43) },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"v":1,"op":"quiet","dumper":42,"until_ends":43}"#);
        assert_eq!(serde_json::from_str::<RequestEnvelope>(&text).unwrap(), request);
    }

    #[test]
    fn a_thread_exists_until_it_has_ended() {
        let own = std::process::id() as i32;
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            sender.send(unsafe { libc::gettid() }).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        let tid = receiver.recv().unwrap();
        assert!(thread_exists(own, tid));
        thread.join().unwrap();
        assert!(wait_for_gone(own, tid), "thread {tid} still there after its join");
        // Another process's thread of that number is not it.
        assert!(!thread_exists(1, tid) || tid == 1);
    }

    fn wait_for_gone(pid: i32, tid: i32) -> bool {
        // The kernel releases a joined thread's ID a moment after glibc's join returns.
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            !thread_exists(pid, tid)
        })
    }

    #[test]
    fn no_ancestor_of_the_test_is_dumping() {
        assert_eq!(dumping_ancestor(), None);
    }

    #[test]
    fn quieting_a_tree_skips_children_without_a_control_socket() {
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        assert_eq!(quiet_descendants(std::process::id() as i32, None), 0);
        let _ = child.kill();
        let _ = child.wait();
    }

    fn pending(client_sends: &[u8]) -> (UnixStream, PendingRequest) {
        let (client, server) = UnixStream::pair().unwrap();
        (&client).write_all(client_sends).unwrap();
        (client, PendingRequest::new(server, 1, Instant::now()).unwrap())
    }

    #[test]
    fn a_pending_request_is_decoded_once_its_line_is_complete() {
        let (client, mut request) = pending(br#"{"v":1,"#);
        assert!(matches!(request.receive(), Received::Partial));
        (&client).write_all(b"\"op\":\"status\"}\n").unwrap();
        match request.receive() {
            Received::Request(Ok(envelope)) => assert_eq!(envelope.request, Request::Status),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pending_request_reports_garbage_overlong_cut_and_silent_clients() {
        let (_client, mut garbage) = pending(b"{nonsense\n");
        assert!(matches!(garbage.receive(), Received::Request(Err(e)) if e.contains("unreadable")));
        let (_client, mut long) = pending(&vec![b' '; MAX_LINE as usize + 10]);
        assert!(matches!(long.receive(), Received::Request(Err(e)) if e.contains("longer than")));
        let (client, mut cut) = pending(b"{\"v\":1");
        drop(client);
        assert!(matches!(cut.receive(), Received::Request(Err(e)) if e.contains("end of line")));
        let (client, mut silent) = pending(b"");
        assert!(matches!(silent.receive(), Received::Partial));
        drop(client);
        assert!(matches!(silent.receive(), Received::Gone));
    }

    #[test]
    fn locate_reports_missing_and_foreign_processes() {
        assert_eq!(locate(0).unwrap_err().code(), OPAL_ERR_BAD_PARAM);
        assert_eq!(locate(i32::MAX).unwrap_err().code(), OPAL_ERR_NOT_FOUND);
    }

    /// Tests that look at this process's own sockets and thread names.
    static OWN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_socket_is_found_from_the_pid_only_once_bound() {
        let _alone = OWN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id() as i32;
        // Nothing else in this test binary binds a control socket.
        assert_eq!(locate(pid).unwrap_err().code(), OPAL_ERR_NOT_AVAILABLE);
        let (_listener, name) = bind(pid).unwrap();
        let endpoint = locate(pid).unwrap();
        assert_eq!(endpoint.name, name);
    }

    #[test]
    fn a_process_without_its_socket_is_busy_while_a_thread_carries_the_dump_name() {
        let _alone = OWN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id() as i32;
        let (marked, released) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let marker = DumpMarker::set();
                marked.wait();
                released.wait();
                drop(marker);
                marked.wait();
            });
            marked.wait();
            assert_eq!(locate(pid).unwrap_err().code(), OPAL_ERR_RESOURCE_BUSY);
            released.wait();
            marked.wait();
            assert_eq!(locate(pid).unwrap_err().code(), OPAL_ERR_NOT_AVAILABLE);
        });
    }
}

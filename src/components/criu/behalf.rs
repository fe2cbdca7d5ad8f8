//! A criu dump taken by a privileged `opal-checkpoint` for a process that may not run
//! CRIU itself (design §4, "Privileges"): root checkpointing a user's process.
//!
//! The tool offers a rendezvous directory with its request: a fresh directory of its
//! own, handed to the process's owner. When the process reaches its checkpoint phase
//! it writes `request.json` there (where its snapshot is being written, with the CRIU
//! options its parameters give) and waits, polling, for `done`. The tool dumps the
//! process into that snapshot and writes `done` ("ok" or the error); the process goes
//! on. A restored copy wakes up in the same polling loop; its start time
//! (/proc/self/stat), which CRIU cannot restore, tells it from the original. The process
//! also watches the tool (its PID from the request's connection, and that process's
//! start time): if the tool dies, the process gives the checkpoint up at once and
//! removes the rendezvous directory. It holds no descriptor of the tool meanwhile (a
//! pidfd or a connection would be dumped with it).
//!
//! CRIU runs as the process's owner with only the capabilities a dump needs (its
//! unprivileged mode): it then writes nowhere that user could not, and reads the
//! process's limits without CAP_SYS_RESOURCE, which root may lack. What the tool itself
//! does in directories the user controls goes through descriptors opened without
//! following symbolic links, and only in a directory owned by the process's owner.

use super::binary::CriuBinary;
use super::follow::Follower;
use super::rpc::{self, DumpOptions, DumpOutcome, ImagesDir, LockMethod};
use crate::codes;
use crate::error::{Error, Result};
use crate::snapshot::series::start_time;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REQUEST_FILE: &str = "request.json";
const DONE_FILE: &str = "done";
/// Where the tool writes the answer before it appears as [`DONE_FILE`].
const DONE_STAGING: &str = ".done";
/// How long the process waits for the tool's dump.
const PATIENCE: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(5);
/// How often the process looks whether the tool still lives.
const TOOL_CHECK: Duration = Duration::from_millis(200);

/// What the process asks the tool to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DumpRequest {
    /// The snapshot being written, where the images go.
    snapshot: PathBuf,
    log_file: String,
    log_level: i32,
    shell_job: bool,
    ext_unix_sk: bool,
    tcp_established: bool,
    file_locks: bool,
    network_lock: Option<LockMethod>,
    /// Hash the page images while CRIU writes them (`crs_criu_follow_images`).
    #[serde(default)]
    follow_images: bool,
}

/// When this process (image) started; see [`start_time`].
fn own_start_time() -> Option<u64> {
    start_time(std::process::id() as i32)
}

/// A privileged tool's offer as the process holds it: where to ask, and which process
/// offered, to notice when it is gone.
#[derive(Debug, Clone)]
pub struct DumpHelper {
    pub rendezvous: PathBuf,
    /// The tool's PID and its start time (None: it had already ended when its request
    /// was read); no PID when the tool cannot be watched.
    tool: Option<(i32, Option<u64>)>,
}

impl DumpHelper {
    /// `tool_pid` is the requesting peer's PID (SO_PEERCRED), read while its request is
    /// served; 0 when the tool lives outside this PID namespace, which then cannot be
    /// watched (the process waits for it as long as the rendezvous directory exists),
    /// as when /proc hides it (`hidepid`).
    pub fn new(rendezvous: PathBuf, tool_pid: i32) -> DumpHelper {
        let tool = match start_time(tool_pid) {
            _ if tool_pid <= 0 => None,
            Some(started) => Some((tool_pid, Some(started))),
            // SAFETY: signal 0 only asks whether the PID exists.
            None if unsafe { libc::kill(tool_pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) =>
            {
                Some((tool_pid, None))
            }
            None => None,
        };
        DumpHelper { rendezvous, tool }
    }

    /// The tool's PID, if it has gone since it offered (or before its offer was read).
    fn tool_gone(&self) -> Option<i32> {
        let (pid, started) = self.tool?;
        (started.is_none() || start_time(pid) != started).then_some(pid)
    }

    /// Gives the checkpoint up: the tool that would dump the process is gone.
    fn abandon(&self, tool: i32) -> Error {
        // remove_dir_all does not follow symbolic links.
        let _ = std::fs::remove_dir_all(&self.rendezvous);
        Error::new(
            codes::OPAL_ERR_TIMEOUT,
            format!(
                "criu: the opal-checkpoint (PID {tool}) that offered to dump this process is gone; \
                 checkpoint abandoned"
            ),
        )
    }
}

/// Process side: asks the tool behind `helper` to dump this process with `opts` (its
/// PID and `as_user` are the tool's to set), and waits for it.
pub fn ask(helper: &DumpHelper, opts: &DumpOptions, follow_images: bool) -> Result<DumpOutcome> {
    let rendezvous = helper.rendezvous.as_path();
    if let Some(tool) = helper.tool_gone() {
        return Err(helper.abandon(tool));
    }
    let started = own_start_time()
        .ok_or_else(|| Error::msg("criu: cannot read this process's start time"))?;
    let request = DumpRequest {
        snapshot: opts.images_dir.to_path_buf(),
        log_file: opts.log_file.to_string(),
        log_level: opts.log_level,
        shell_job: opts.shell_job,
        ext_unix_sk: opts.ext_unix_sk,
        tcp_established: opts.tcp_established,
        file_locks: opts.file_locks,
        network_lock: opts.network_lock,
        follow_images,
    };
    let text = serde_json::to_string(&request).expect("a request serialises");
    let staging = rendezvous.join(".request.json");
    std::fs::write(&staging, text)
        .and_then(|()| std::fs::rename(&staging, rendezvous.join(REQUEST_FILE)))
        .map_err(|e| {
            Error::io(format!("criu: asking the tool to dump through {}", rendezvous.display()), e)
        })?;
    let since = Instant::now();
    let mut tool_checked = since;
    let answer = loop {
        // First, before anything on disk: a restored copy sees the original's answer.
        if own_start_time() != Some(started) {
            return Ok(DumpOutcome::Restored);
        }
        match std::fs::read_to_string(rendezvous.join(DONE_FILE)) {
            Ok(answer) => break answer,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("criu: reading the tool's answer in {}", rendezvous.display()),
                    e,
                ))
            }
        }
        if tool_checked.elapsed() >= TOOL_CHECK {
            if let Some(tool) = helper.tool_gone() {
                return Err(helper.abandon(tool));
            }
            tool_checked = Instant::now();
        }
        if !rendezvous.is_dir() || since.elapsed() > PATIENCE {
            return Err(Error::new(
                codes::OPAL_ERR_TIMEOUT,
                format!(
                    "criu: the opal-checkpoint that offered to dump this process did not (in {} s)",
                    since.elapsed().as_secs()
                ),
            ));
        }
        std::thread::sleep(POLL);
    };
    // The offer is used up: a tool killed from here on leaves nothing behind.
    let _ = std::fs::remove_dir_all(rendezvous);
    if answer != "ok" {
        return Err(Error::msg(answer));
    }
    Ok(DumpOutcome::Dumped)
}

/// Tool side: a rendezvous directory offered to process `pid`, removed when dropped.
pub struct Offer {
    pid: i32,
    owner: (u32, u32),
    path: PathBuf,
    dir: OwnedFd,
    served: bool,
}

impl Offer {
    /// A fresh directory under the system's temporary directory, given to the owner
    /// of process `pid`; None when this process may not run CRIU, or `pid` belongs to
    /// root (which runs CRIU itself).
    pub fn new(pid: i32) -> Result<Option<Offer>> {
        let owner = owner_of(pid)?;
        if owner.0 == 0 || !super::binary::privileged() {
            return Ok(None);
        }
        let base = std::env::temp_dir();
        let mut attempts = 0;
        let path = loop {
            let path = base.join(format!(
                "opalcrs-dump-{}-{:016x}",
                std::process::id(),
                crate::snapshot::series::random_u64()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1
                }
                Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
            }
        };
        let dir = open_dir_at(None, &path)?;
        // SAFETY: fchown on a descriptor we own.
        if unsafe { libc::fchown(dir.as_raw_fd(), owner.0, owner.1) } != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(Error::io(format!("giving {} to uid {}", path.display(), owner.0), err));
        }
        Ok(Some(Offer { pid, owner, path, dir, served: false }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dumps the process if it has asked and was not served yet (CRIU is found in
    /// `PATH` or the usual places).
    pub fn serve(&mut self) {
        if self.served {
            return;
        }
        let Some(text) = read_at(&self.dir, REQUEST_FILE) else { return };
        let answer = match serde_json::from_str::<DumpRequest>(&text) {
            Ok(request) => {
                match super::binary::find(None).and_then(|bin| self.dump(&bin, &request)) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.message().to_string(),
                }
            }
            Err(e) => format!("criu: the process's dump request is not valid: {e}"),
        };
        // O_EXCL and O_NOFOLLOW: nothing planted there is followed or overwritten. The
        // answer is written and given to the process under a staging name and appears
        // whole by a rename: the process polls for it, and found half-made (still
        // root's) it could not be read.
        let owner = self.owner;
        let written = create_at(&self.dir, DONE_STAGING).and_then(|mut file| {
            file.write_all(answer.as_bytes()).map_err(|e| Error::io("writing the answer", e))?;
            // The process must read it. SAFETY: fchown on a descriptor we own.
            if unsafe { libc::fchown(file.as_raw_fd(), owner.0, owner.1) } != 0 {
                return Err(Error::io(
                    "giving the answer to the process",
                    std::io::Error::last_os_error(),
                ));
            }
            rename_at(&self.dir, DONE_STAGING, DONE_FILE)
        });
        if let Err(e) = written {
            log::warn!("cannot answer process {}: {e}", self.pid);
        }
        self.served = true;
    }

    fn dump(&self, bin: &CriuBinary, request: &DumpRequest) -> Result<()> {
        let snapshot = open_dir_at(None, &request.snapshot)?;
        let stat = fstat(&snapshot)?;
        if stat.st_uid != self.owner.0 {
            return Err(Error::new(
                codes::OPAL_ERR_PERM,
                format!(
                    "criu: refusing to dump into {}: it belongs to uid {}, not to the process's owner {}",
                    request.snapshot.display(),
                    stat.st_uid,
                    self.owner.0
                ),
            ));
        }
        // The tool is outside the dumped tree; the follower runs as the owner, as CRIU.
        let follower = request
            .follow_images
            .then(|| Follower::start_as(&snapshot, self.pid, self.owner))
            .flatten();
        let kept = snapshot.try_clone().map_err(|e| Error::io("duplicating a descriptor", e))?;
        let images = ImagesDir::from_fd(snapshot, request.snapshot.clone());
        let options = DumpOptions {
            pid: self.pid,
            images_dir: &request.snapshot,
            log_file: &request.log_file,
            log_level: request.log_level,
            leave_running: true,
            shell_job: request.shell_job,
            ext_unix_sk: request.ext_unix_sk,
            tcp_established: request.tcp_established,
            file_locks: request.file_locks,
            network_lock: request.network_lock,
            external: &[],
            as_user: Some(self.owner),
        };
        // A follower left running by a failed dump ends when the process gives the
        // snapshot up (its directory goes) or ends.
        match rpc::dump_into(bin, &options, images)? {
            DumpOutcome::Dumped => {
                if let Some(follower) = follower {
                    follower.collect(&kept, &request.snapshot, Some(self.owner));
                }
                Ok(())
            }
            DumpOutcome::Restored => Err(Error::msg("criu: the tool was restored in its own dump")),
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        // remove_dir_all does not follow symbolic links.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Real uid and gid of process `pid`.
fn owner_of(pid: i32) -> Result<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::io(format!("process {pid}"), e))?;
    let first = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    match (first("Uid:"), first("Gid:")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(Error::msg(format!("process {pid}: no Uid/Gid in its status"))),
    }
}

/// Opens a directory (relative to `at` if given) without following a symbolic link in
/// its last component.
fn open_dir_at(at: Option<&OwnedFd>, path: &Path) -> Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::new(codes::OPAL_ERR_BAD_PARAM, format!("{}: NUL in path", path.display()))
    })?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let base = at.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: openat with a C string we own; the result is checked.
    let fd = unsafe { libc::openat(base, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::io(
            format!("opening directory {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> Result<libc::stat> {
    // SAFETY: stat is plain old data, filled in by fstat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own into our buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(Error::io("fstat", std::io::Error::last_os_error()));
    }
    Ok(stat)
}

fn open_file_at(dir: &OwnedFd, name: &str, flags: i32) -> Option<File> {
    let name = CString::new(name).ok()?;
    // SAFETY: openat with a C string we own; the result is checked.
    let fd: RawFd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    // SAFETY: a new descriptor owned by nobody else.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// A small regular file of the directory, read without following links.
fn read_at(dir: &OwnedFd, name: &str) -> Option<String> {
    let file = open_file_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK)?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Renames `from` to `to`, both in `dir` (a link there is moved, not followed).
fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> Result<()> {
    let (from_c, to_c) = (CString::new(from), CString::new(to));
    let (Ok(from_c), Ok(to_c)) = (from_c, to_c) else {
        return Err(Error::new(codes::OPAL_ERR_BAD_PARAM, format!("{from} -> {to}: NUL in name")));
    };
    let fd = dir.as_raw_fd();
    // SAFETY: renameat with C strings we own, relative to an open directory.
    if unsafe { libc::renameat(fd, from_c.as_ptr(), fd, to_c.as_ptr()) } != 0 {
        return Err(Error::io(format!("renaming {from} to {to}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn create_at(dir: &OwnedFd, name: &str) -> Result<File> {
    open_file_at(dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
        .ok_or_else(|| Error::io(format!("creating {name}"), std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_and_stable() {
        let first = own_start_time().unwrap();
        assert!(first > 0);
        assert_eq!(own_start_time(), Some(first));
    }

    #[test]
    fn a_helper_notices_that_its_tool_is_gone_and_removes_the_rendezvous() {
        let rendezvous =
            std::env::temp_dir().join(format!("opalcrs-test-rdv-{}", std::process::id()));
        std::fs::create_dir_all(&rendezvous).unwrap();
        let ours = DumpHelper::new(rendezvous.clone(), std::process::id() as i32);
        assert_eq!(ours.tool_gone(), None);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let theirs = DumpHelper::new(rendezvous.clone(), child.id() as i32);
        assert!(theirs.tool.is_some());
        assert_eq!(theirs.tool_gone(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(theirs.tool_gone(), Some(child.id() as i32));
        // A tool that ended before its offer was read is gone from the start.
        let late = DumpHelper::new(rendezvous.clone(), child.id() as i32);
        assert_eq!(late.tool_gone(), Some(child.id() as i32));
        let opts = DumpOptions::new(1, Path::new("/nonexistent"));
        let error = ask(&theirs, &opts, true).unwrap_err();
        assert!(error.message().contains("is gone"), "{error}");
        assert!(!rendezvous.exists());
        // A tool outside our PID namespace (PID 0) cannot be watched.
        assert_eq!(DumpHelper::new(rendezvous, 0).tool_gone(), None);
    }

    #[test]
    fn requests_round_trip() {
        let request = DumpRequest {
            snapshot: "/home/u/opal_snapshot_7.ckpt/.tmp-0-7-ab".into(),
            log_file: "criu.log".into(),
            log_level: 2,
            shell_job: true,
            ext_unix_sk: true,
            tcp_established: false,
            file_locks: true,
            network_lock: Some(LockMethod::Auto),
            follow_images: true,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<DumpRequest>(&text).unwrap(), request);
    }

    #[test]
    fn the_owner_of_a_process_is_read_from_proc() {
        // SAFETY: getuid/getgid have no preconditions.
        let ours = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(owner_of(std::process::id() as i32).unwrap(), ours);
        assert!(owner_of(i32::MAX).is_err());
    }
}

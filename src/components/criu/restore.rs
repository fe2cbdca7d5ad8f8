//! Restoring CRIU images through `criu swrk`, so that the restored task becomes a child
//! we can wait for (`rst_sibling`, like libcriu's `criu_restore_child`).
//!
//! Same PID namespace: the original PIDs must be free. New PID namespace (the original
//! still runs): the restored task must not be PID 1 there (a namespace dies with its
//! init), so we fork a small init of our own:
//!
//! ```text
//! caller ── holder (unshares PID + mount ns) ── init (PID 1) ─┬─ criu swrk (exits after answering)
//!                                                             └─ restored task (rst_sibling)
//! ```
//!
//! The init mounts a private /proc for the namespace, runs the restore, reports CRIU's
//! answer on a pipe, waits for the caller to acknowledge (by then the caller has found
//! the task's PID in its own namespace), then reaps and exits with the task's status,
//! which the holder passes on to the caller. A descriptor of ours that the tree could
//! not be dumped with again reaches it through a pipe that the holder relays (see
//! [`Relay`]). Holder and init run in children forked from a possibly multi-threaded
//! process, so they only make system calls on data prepared before the fork.

use super::binary::CriuBinary;
use super::proto::{InheritFd, Opts, Reader, ReqType, Request, Response, Value};
use super::rpc::{self, Helper, ImagesDir, Session, SwrkCommand, HELPER_FAILED};
use crate::codes;
use crate::error::{Error, Result};
use crate::owner::{Owner, CAP_CHECKPOINT_RESTORE, CAP_SETPCAP, CAP_SYS_PTRACE};
use log::debug;
use std::ffi::{c_int, c_uint};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a same-namespace restore waits for the image's PIDs to be released (a
/// killed original may linger as a zombie until its parent reaps it).
const PID_RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
const PID_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a restart waits for an image's PID held by a zombie (a killed original that
/// its parent, say a slow init, has not reaped yet) before it counts as taken.
const ZOMBIE_PATIENCE: Duration = Duration::from_secs(3);

/// PIDs below this are what a fresh PID namespace hands out first: an image that holds
/// none of them cannot collide with our init, criu swrk or CRIU's helpers there.
const FIRST_PIDS_OF_A_NAMESPACE: i32 = 300;

/// First two words of `pstree.img` (criu/include/magic.h).
pub(super) const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const PSTREE_MAGIC: u32 = 0x5027_3030;
const CORE_MAGIC: u32 = 0x5505_3847;
/// `core_entry.thread_core` (images/core.proto), `thread_core_entry.creds`,
/// `creds_entry.groups` (images/creds.proto).
const CORE_THREAD_CORE: u32 = 5;
const THREAD_CORE_CREDS: u32 = 10;
const CREDS_GROUPS: u32 = 14;

/// Capabilities CRIU keeps when it restores as a user. CAP_SETPCAP: CRIU trims the
/// bounding set to the image's, which needs it whenever that set was not full; it also
/// lets CRIU give the tasks inheritable capabilities, which [`Restored::runs_as`] refuses.
const RESTORE_CAPABILITIES: &[u32] = &[CAP_SETPCAP, CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE];
/// `PstreeEntry` fields (images/pstree.proto).
const PSTREE_PID: u32 = 1;
const PSTREE_THREADS: u32 = 5;

/// What to restore and how.
pub struct RestoreOptions<'a> {
    pub images_dir: &'a Path,
    /// Name of CRIU's log file inside `images_dir`.
    pub log_file: &'a str,
    pub log_level: i32,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    /// Files of the image replaced by our descriptors, e.g. `("pipe:[1234]", 1)` hands
    /// our stdout to the task in place of the pipe it had when dumped.
    pub inherit_fds: &'a [(String, RawFd)],
    /// Which of `inherit_fds` is the restored root's stdin: a [`Relay`] for it, in a
    /// fresh PID namespace, copies towards the tree.
    pub inherit_stdin: Option<RawFd>,
    /// Restore into a fresh PID namespace (needed while the original PIDs are taken).
    pub new_pidns: bool,
    /// Checks the restored tree while CRIU still holds it, before any of its tasks runs
    /// again (CRIU's `pre-resume` step): Err, and the tree is killed and the restore
    /// fails with that error. Nothing the tasks can observe changes, unlike a SIGSTOP
    /// and SIGCONT (a stopped child would run, a blocked SIGCONT would be pending).
    pub before_resume: Option<&'a BeforeResume<'a>>,
    /// How long CRIU may take to restore; then it and what it restored so far are
    /// killed, and the error has code OPAL_ERR_TIMEOUT. None: no limit.
    pub timeout: Option<Duration>,
    /// Run CRIU as this user with only the capabilities a restore needs (its
    /// unprivileged mode): root restoring another user's images, which then cannot ask
    /// for more than that user has (README, "Security model").
    pub as_owner: Option<&'a Owner>,
}

/// See [`RestoreOptions::before_resume`].
pub type BeforeResume<'a> = dyn Fn(&Restored) -> Result<()> + 'a;

/// CRIU's notification after which the restored tasks are left to run.
const PRE_RESUME: &str = "pre-resume";

/// A restored task, our child (directly, or through the namespace holder). Wait for it
/// (`wait`), or its end leaves a zombie behind.
#[derive(Debug)]
pub struct Restored {
    /// The task's PID in the caller's namespace.
    pub pid: i32,
    /// The PID the task sees for itself (its original PID).
    pub pid_in_ns: i32,
    pub new_pidns: bool,
    /// The child to wait for: the task itself, or the namespace holder.
    waiter: libc::pid_t,
}

impl Restored {
    /// Sends `signal` to the restored task and all its descendants, found before the
    /// first is signalled (a killed parent's children move elsewhere). For a tree
    /// restored stopped, which cannot fork meanwhile.
    pub fn signal_tree(&self, signal: c_int) {
        for pid in tree(self.pid) {
            // SAFETY: plain kill of a restored task that is ours and not yet reaped
            // (stopped tasks do not exit).
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Whether every thread of the restored tree (stopped) runs as `uid`/`gid` in all
    /// four ids and holds no capability, inheritable ones included; Err says which not.
    pub fn runs_as(&self, uid: u32, gid: u32) -> std::result::Result<(), String> {
        let mut tree = vec![self.pid];
        let mut next = 0;
        while next < tree.len() {
            tree.extend(children(tree[next]));
            next += 1;
        }
        let threads = tree.iter().flat_map(|pid| {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten();
            tasks.flatten().map(move |task| (*pid, task.path().join("status")))
        });
        for (pid, path) in threads {
            let status = std::fs::read_to_string(&path)
                .map_err(|e| format!("restored process {pid}: {e}"))?;
            let field = |name: &str| {
                status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("")
            };
            let all = |value: &str, id: u32| value.split_whitespace().all(|v| v == id.to_string());
            if !all(field("Uid:"), uid) || !all(field("Gid:"), gid) {
                return Err(format!(
                    "restored process {pid} has uid {} gid {}, not its owner's {uid}/{gid}",
                    field("Uid:"),
                    field("Gid:")
                ));
            }
            for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
                if u64::from_str_radix(field(caps), 16) != Ok(0) {
                    return Err(format!(
                        "restored process {pid} holds capabilities ({caps} {})",
                        field(caps)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits until the restored task ends: its exit code, or 128 + N if signal N killed it.
    pub fn wait(self) -> Result<i32> {
        rpc::wait_exit_code(self.waiter)
            .map_err(|e| Error::io(format!("waiting for restored process {}", self.pid), e))
    }
}

/// `root` and all its descendants, parents before their children.
fn tree(root: i32) -> Vec<i32> {
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(children(tree[next]));
        next += 1;
    }
    tree
}

/// Whether this PID is allocated in our namespace: a process or thread (a zombie
/// counts), or the process group or session ID of some process (a killed session
/// leader's PID stays allocated while members of its session remain).
pub fn pid_in_use(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|other| std::fs::read_to_string(format!("/proc/{other}/stat")).ok())
        .any(|stat| group_and_session(&stat).is_some_and(|(pgrp, sid)| pgrp == pid || sid == pid))
}

/// The image's PIDs taken here, each with what holds it. While some are held by
/// dying processes or zombies, waits for them to be reaped, [`ZOMBIE_PATIENCE`] at most.
pub fn taken_pids(pids: &[i32]) -> Vec<(i32, String)> {
    let deadline = Instant::now() + ZOMBIE_PATIENCE;
    loop {
        let taken: Vec<(i32, Option<Holder>)> = pids
            .iter()
            .copied()
            .filter(|&pid| pid_in_use(pid))
            .map(|pid| (pid, Holder::of(pid)))
            .collect();
        // A process read as gone right after it was seen was just reaped: look again.
        let passing = taken.iter().any(|(pid, holder)| match holder {
            Some(holder) => holder.dying,
            None => !pid_in_use(*pid),
        });
        if !passing || Instant::now() >= deadline {
            return taken
                .into_iter()
                .map(|(pid, holder)| (pid, describe_holder(pid, holder, ZOMBIE_PATIENCE)))
                .collect();
        }
        debug!("crs:criu: waiting for dying processes to be reaped: {taken:?}");
        std::thread::sleep(PID_POLL_INTERVAL);
    }
}

/// The process that holds a PID, from /proc/PID/stat.
#[derive(Debug)]
struct Holder {
    /// A zombie, or exiting (PF_EXITING: killed, not yet a zombie).
    dying: bool,
    zombie: bool,
    ppid: String,
    comm: String,
}

impl Holder {
    fn of(pid: i32) -> Option<Holder> {
        const PF_EXITING: u64 = 0x4;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        // state ppid pgrp session tty_nr tpgid flags ...
        let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().take(7).collect();
        let flags: u64 = fields.get(6)?.parse().ok()?;
        let zombie = fields[0] == "Z";
        Some(Holder {
            dying: zombie || flags & PF_EXITING != 0,
            zombie,
            ppid: fields[1].to_string(),
            comm: stat.get(open + 1..close)?.to_string(),
        })
    }
}

/// What holds PID `pid`, for a message; `waited`: how long a zombie was waited for.
fn describe_holder(pid: i32, holder: Option<Holder>, waited: Duration) -> String {
    match holder {
        Some(Holder { zombie: true, ppid, .. }) => format!(
            "PID {pid} is held by a zombie (PPID {ppid}) that was not reaped within {}s",
            waited.as_secs()
        ),
        Some(Holder { ppid, comm, .. }) => format!("PID {pid} is taken by {comm} (PPID {ppid})"),
        None => format!("PID {pid} is a process group or session ID in use"),
    }
}

/// Process group and session of a /proc/PID/stat line ("pid (comm) state ppid pgrp
/// session ..."; comm may hold spaces and parentheses, so fields follow the last ')').
fn group_and_session(stat: &str) -> Option<(i32, i32)> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The PIDs and thread IDs recorded in the images (`pstree.img`), the root task first.
pub fn image_pids(images_dir: &Path) -> Result<Vec<i32>> {
    let path = images_dir.join("pstree.img");
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::io(format!("no CRIU images in {}: {}", images_dir.display(), path.display()), e)
    })?;
    parse_pstree(&bytes).map_err(|e| e.context(path.display()))
}

/// The entries of a CRIU image (`what` names it in errors) with the given magic: after
/// the two magic words, each entry is a length and a protobuf message.
pub(super) fn image_entries<'a>(bytes: &'a [u8], magic: u32, what: &str) -> Result<Vec<&'a [u8]>> {
    let bad = |why: &str| {
        Error::new(codes::OPAL_ERR_FILE_READ_FAILURE, format!("not a CRIU {what} image: {why}"))
    };
    let word = |at: usize| -> Option<u32> {
        bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(magic) {
        return Err(bad("wrong magic"));
    }
    let mut entries = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = word(at).ok_or_else(|| bad("truncated entry size"))? as usize;
        entries.push(bytes.get(at + 4..at + 4 + len).ok_or_else(|| bad("truncated entry"))?);
        at += 4 + len;
    }
    Ok(entries)
}

fn parse_pstree(bytes: &[u8]) -> Result<Vec<i32>> {
    let bad = |what: &str| {
        Error::new(codes::OPAL_ERR_FILE_READ_FAILURE, format!("not a CRIU pstree image: {what}"))
    };
    let mut pids = Vec::new();
    for entry in image_entries(bytes, PSTREE_MAGIC, "pstree")? {
        let mut reader = Reader::new(entry);
        while let Some((number, value)) = reader.next_field()? {
            if let (PSTREE_PID | PSTREE_THREADS, Value::Varint(raw)) = (number, value) {
                let pid = raw as i32;
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    if pids.is_empty() {
        return Err(bad("no process"));
    }
    Ok(pids)
}

/// Who CRIU runs as to restore `owner`'s images: the owner, with the supplementary
/// groups the root task had (`core-<pid>.img`) that the owner still has. CRIU, without
/// CAP_SETGID, restores no other list, so a task never gets a group its owner lacks,
/// and one that had fewer groups than its owner now has comes back with those.
fn criu_credentials(owner: &Owner, images_dir: &Path, root_pid: i32) -> Result<Owner> {
    let path = images_dir.join(format!("core-{root_pid}.img"));
    let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("{}", path.display()), e))?;
    let recorded = parse_core_groups(&bytes).map_err(|e| e.context(path.display()))?;
    let groups = recorded.into_iter().filter(|g| owner.groups.contains(g)).collect();
    Ok(Owner { groups, ..owner.clone() })
}

/// The supplementary groups in the `creds` of a `core-<pid>.img`.
fn parse_core_groups(bytes: &[u8]) -> Result<Vec<u32>> {
    let bad = |what: &str| {
        Error::new(codes::OPAL_ERR_FILE_READ_FAILURE, format!("not a CRIU core image: {what}"))
    };
    let entries = image_entries(bytes, CORE_MAGIC, "core")?;
    let entry = *entries.first().ok_or_else(|| bad("no entry"))?;
    let field = |message: &[u8], number: u32| -> Result<Option<Vec<u8>>> {
        let mut reader = Reader::new(message);
        while let Some((found, value)) = reader.next_field()? {
            if let (true, Value::Bytes(inner)) = (found == number, value) {
                return Ok(Some(inner.to_vec()));
            }
        }
        Ok(None)
    };
    let thread = field(entry, CORE_THREAD_CORE)?.ok_or_else(|| bad("no thread_core"))?;
    let creds = field(&thread, THREAD_CORE_CREDS)?.ok_or_else(|| bad("no creds"))?;
    let mut groups = Vec::new();
    let mut reader = Reader::new(&creds);
    while let Some((number, value)) = reader.next_field()? {
        match (number, value) {
            (CREDS_GROUPS, Value::Varint(group)) => groups.push(group as u32),
            (CREDS_GROUPS, _) => return Err(bad("packed or malformed groups")),
            _ => {}
        }
    }
    Ok(groups)
}

/// Restores the images; the restored task becomes our child (see `Restored`).
pub fn restore(bin: &CriuBinary, opts: &RestoreOptions) -> Result<Restored> {
    let images = ImagesDir::open(opts.images_dir)?;
    rpc::check_log_file_name(opts.log_file)?;
    let pids = image_pids(&images.path)?;
    for (key, fd) in opts.inherit_fds {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
            let err = io::Error::last_os_error();
            return Err(Error::new(
                codes::OPAL_ERR_BAD_PARAM,
                format!("inherit_fd {key}: descriptor {fd}: {err}"),
            ));
        }
    }
    let request = Request {
        kind: ReqType::RESTORE,
        opts: Some(Opts {
            images_dir: Some(images.helper_path()),
            log_level: opts.log_level,
            log_file: Some(opts.log_file.to_string()),
            shell_job: opts.shell_job,
            ext_unix_sk: opts.ext_unix_sk,
            tcp_established: opts.tcp_established,
            file_locks: opts.file_locks,
            rst_sibling: true,
            notify_scripts: opts.before_resume.is_some(),
            inherit_fd: opts
                .inherit_fds
                .iter()
                .map(|(key, fd)| InheritFd { key: key.clone(), fd: *fd })
                .collect(),
            unprivileged: rpc::unprivileged_mode() || opts.as_owner.is_some(),
            ..Opts::default()
        }),
    }
    .encode();
    let as_user = match opts.as_owner {
        Some(owner) => {
            Some((criu_credentials(owner, &images.path, pids[0])?, RESTORE_CAPABILITIES))
        }
        None => None,
    };
    let mut fds = vec![images.fd()];
    fds.extend(opts.inherit_fds.iter().map(|&(_, fd)| fd));
    let context = RestoreContext {
        bin,
        request: &request,
        inherit_fds: &fds,
        what: format!("restore of {}", images.path.display()),
        log: images.path.join(opts.log_file),
        timeout: opts.timeout,
        deadline: opts.timeout.map(|limit| Instant::now() + limit),
        as_user,
        before_resume: opts.before_resume,
    };
    debug!("crs:criu: {} (PIDs {pids:?}, new PID namespace: {})", context.what, opts.new_pidns);
    let started = Instant::now();
    let restored = if opts.new_pidns {
        let relays = opts
            .inherit_fds
            .iter()
            .filter(|&&(_, fd)| Relay::needed_for(fd))
            .map(|&(_, fd)| Relay::new(fd, opts.inherit_stdin == Some(fd)))
            .collect::<Result<Vec<Relay>>>()?;
        restore_in_new_pidns(&context, &pids, relays)?
    } else {
        wait_until_free(&pids, &images.path)?;
        restore_here(&context, pids[0])?
    };
    drop(images);
    debug!("crs:criu: restored {restored:?} after {:?}", started.elapsed());
    Ok(restored)
}

struct RestoreContext<'a> {
    bin: &'a CriuBinary,
    request: &'a [u8],
    inherit_fds: &'a [RawFd],
    what: String,
    log: PathBuf,
    timeout: Option<Duration>,
    /// When the restore must have finished.
    deadline: Option<Instant>,
    as_user: Option<(Owner, &'static [u32])>,
    before_resume: Option<&'a BeforeResume<'a>>,
}

impl RestoreContext<'_> {
    /// Runs the `before_resume` check on the held tree; on Err the tree is killed.
    fn check_held(&self, held: &Restored) -> Result<()> {
        let Some(check) = self.before_resume else { return Ok(()) };
        let verdict = check(held);
        if verdict.is_err() {
            held.signal_tree(libc::SIGKILL);
        }
        verdict
    }

    /// The error of a restore that did not finish in time (after what it started was
    /// killed).
    fn stalled(&self) -> Error {
        let seconds = self.timeout.unwrap_or_default().as_secs_f64();
        Error::new(
            codes::OPAL_ERR_TIMEOUT,
            format!(
                "criu {} made no progress in {seconds} s (crs_criu_restore_timeout); CRIU and \
                 what it had restored were killed",
                self.what
            ),
        )
    }

    /// The restored root's PID from CRIU's answer, or the failure.
    fn restored_pid(&self, response: &Response) -> Result<i32> {
        rpc::expect_kind(response, ReqType::RESTORE)?;
        if !response.success {
            return Err(rpc::failure(&self.what, response, &self.log));
        }
        response
            .restore_pid
            .filter(|&pid| pid > 0)
            .ok_or_else(|| Error::msg(format!("criu {}: success without a PID", self.what)))
    }
}

fn wait_until_free(pids: &[i32], images_dir: &Path) -> Result<()> {
    let deadline = Instant::now() + PID_RELEASE_TIMEOUT;
    loop {
        let busy: Vec<i32> = pids.iter().copied().filter(|&pid| pid_in_use(pid)).collect();
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let holders: Vec<String> = busy
                .iter()
                .map(|&pid| describe_holder(pid, Holder::of(pid), PID_RELEASE_TIMEOUT))
                .collect();
            return Err(Error::new(
                codes::OPAL_EXISTS,
                format!(
                    "cannot restore {} here: PID {busy:?} still in use after {PID_RELEASE_TIMEOUT:?} \
                     ({}; is the original running? restore into a new PID namespace)",
                    images_dir.display(),
                    holders.join("; ")
                ),
            ));
        }
        debug!("crs:criu: waiting for PIDs {busy:?} to be released");
        std::thread::sleep(PID_POLL_INTERVAL);
    }
}

/// Restores in our PID namespace; `root` is the image's root task, which CRIU recreates
/// with its PID as our child.
fn restore_here(context: &RestoreContext, root: i32) -> Result<Restored> {
    let as_user = context.as_user.clone();
    let session = Session::start(context.bin, Helper::Child, context.inherit_fds, as_user)?;
    let left = context.deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
    let mut refusal = None;
    let answer = session.call_within(context.request, left, |notice| {
        if notice.notify_script.as_deref() != Some(PRE_RESUME) {
            return true;
        }
        let held = Restored { pid: root, pid_in_ns: root, new_pidns: false, waiter: root };
        refusal = context.check_held(&held).err();
        refusal.is_none()
    });
    if let Some(refusal) = refusal {
        // CRIU fails on the killed tree and ends; the root is ours to reap.
        drop(session);
        kill_partial_restore(root);
        return Err(refusal);
    }
    let response = match answer {
        Err(e) if e.code() == codes::OPAL_ERR_TIMEOUT => {
            // CRIU is killed: nothing adds to the tree any more.
            kill_partial_restore(root);
            drop(session);
            return Err(context.stalled());
        }
        answer => answer?,
    };
    drop(session);
    let pid = context.restored_pid(&response)?;
    Ok(Restored { pid, pid_in_ns: pid, new_pidns: false, waiter: pid })
}

/// The steps of the holder and init, as reported to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Done = 0,
    Unshare,
    ForkInit,
    MountPrivate,
    MountProc,
    SetLastPid,
    NewSession,
    SpawnCriu,
    SendRequest,
    ReceiveAnswer,
    /// CRIU holds the restored tree before resuming it; the init waits for the
    /// caller's verdict (one byte on the acknowledgement pipe, 1: let it run).
    Held,
    Relay,
}

impl Step {
    const ALL: [Step; 12] = [
        Step::Done,
        Step::Unshare,
        Step::ForkInit,
        Step::MountPrivate,
        Step::MountProc,
        Step::SetLastPid,
        Step::NewSession,
        Step::SpawnCriu,
        Step::SendRequest,
        Step::ReceiveAnswer,
        Step::Held,
        Step::Relay,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::Done => "done",
            Step::Unshare => "unshare(CLONE_NEWPID | CLONE_NEWNS)",
            Step::ForkInit => "fork of the namespace's init",
            Step::MountPrivate => "making / private in the new mount namespace",
            Step::MountProc => "mounting /proc for the new PID namespace",
            Step::SetLastPid => "moving the new PID namespace's next PID past the image's PIDs",
            Step::NewSession => "starting a session in the new PID namespace",
            Step::SpawnCriu => "starting criu swrk",
            Step::SendRequest => "sending the request to criu swrk",
            Step::ReceiveAnswer => "reading the answer of criu swrk",
            Step::Held => "holding the restored tree",
            Step::Relay => "handing a pipe to the restored tree in place of our descriptor",
        }
    }
}

/// Report header: step (u32) and errno (i32), native endian; CRIU's answer follows
/// when the step is `Done`.
const REPORT_HEADER: usize = 8;

/// Everything holder and init use, prepared before the fork.
struct PidnsPlan<'a> {
    swrk: SwrkCommand,
    /// Our end and criu's end of the RPC socket pair.
    socket: RawFd,
    criu_socket: RawFd,
    request: &'a [u8],
    report_write: RawFd,
    ack_read: RawFd,
    /// The descriptors above 2 that the holder keeps, sorted; it closes all others at
    /// once, so that it holds no descriptor of another thread's work (a pipe whose end
    /// it held open would never see EOF).
    keep: Vec<RawFd>,
    /// The image's highest PID, in decimal, for the namespace's ns_last_pid: criu swrk
    /// then gets a PID above all of the image's, which CRIU must recreate (a process
    /// that ran in a container has small PIDs, 2 among them).
    last_pid: Vec<u8>,
    /// Whether the image has PIDs a fresh namespace hands out first (to our init, criu
    /// swrk and its helpers), so that moving ns_last_pid past them is required; a
    /// failure to move it is not fatal otherwise.
    last_pid_required: bool,
    /// The acknowledgements of a notification of CRIU: go on, or fail.
    notice_go: Vec<u8>,
    notice_refused: Vec<u8>,
    relays: Vec<RelayFds>,
    /// What the holder keeps once the init runs: each relay's `ours` and `our_end`, sorted.
    relay_keep: Vec<RawFd>,
}

/// A descriptor of ours handed to a tree restored into a fresh PID namespace through a
/// pipe, which the holder copies to or from our descriptor. The tree's mount namespace
/// is a copy of ours, and a file opened out here (opal-restart's output file, /dev/null)
/// lies on a mount that the copy does not list: CRIU, dumping the tree again from
/// inside, failed with "Can't lookup mount". A pipe lies on no mount, and a pipe is what
/// the tree had there when it was dumped (only pipes and sockets are handed over into a
/// fresh namespace).
struct Relay {
    /// Our descriptor, a copy of the handed one.
    ours: OwnedFd,
    /// The pipe's ends: the tree's (in the holder, it takes the handed number) and ours.
    tree_end: OwnedFd,
    our_end: OwnedFd,
    fds: RelayFds,
}

/// The numbers of a [`Relay`], for the holder and the init.
#[derive(Clone, Copy)]
struct RelayFds {
    /// The descriptor number named in CRIU's `inherit_fd`.
    handed: RawFd,
    ours: RawFd,
    tree_end: RawFd,
    our_end: RawFd,
    /// Towards the tree (its stdin): the holder reads `ours` and writes the pipe.
    inbound: bool,
}

/// At most one relay for each of fds 0-2.
const MAX_RELAYS: usize = 3;

impl Relay {
    /// Whether `fd` needs one: all but pipes, sockets (on no mount) and terminals
    /// (CRIU leaves a shell job's terminal alone).
    fn needed_for(fd: RawFd) -> bool {
        // SAFETY: fstat into a zeroed struct; isatty only queries fd.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return false;
        }
        let kind = stat.st_mode & libc::S_IFMT;
        kind != libc::S_IFIFO && kind != libc::S_IFSOCK && unsafe { libc::isatty(fd) } == 0
    }

    fn new(handed: RawFd, inbound: bool) -> Result<Relay> {
        // SAFETY: handed is open (checked by the caller) and stays so for the restore.
        let ours = unsafe { std::os::fd::BorrowedFd::borrow_raw(handed) }
            .try_clone_to_owned()
            .map_err(|e| Error::io(format!("duplicating descriptor {handed} for a relay"), e))?;
        let (read, write) = pipe()?;
        let (tree_end, our_end) = if inbound { (read, write) } else { (write, read) };
        let fds = RelayFds {
            handed,
            ours: ours.as_raw_fd(),
            tree_end: tree_end.as_raw_fd(),
            our_end: our_end.as_raw_fd(),
            inbound,
        };
        Ok(Relay { ours, tree_end, our_end, fds })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("pipe for the restore helper", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn restore_in_new_pidns(
    context: &RestoreContext,
    pids: &[i32],
    relays: Vec<Relay>,
) -> Result<Restored> {
    if pids.contains(&1) {
        // Our own init holds PID 1 there (a namespace ends with its init).
        return Err(Error::new(
            codes::OPAL_ERR_NOT_SUPPORTED,
            format!(
                "{}: the checkpointed process was PID 1 of its PID namespace, which cannot be \
                 restored into a new PID namespace; start the program under a shell or init \
                 there, so that it is not PID 1",
                context.what
            ),
        ));
    }
    let (socket, criu_socket) = rpc::socket_pair()?;
    let (report_read, report_write) = pipe()?;
    let (ack_read, ack_write) = pipe()?;
    let mut keep = vec![
        socket.as_raw_fd(),
        criu_socket.as_raw_fd(),
        report_write.as_raw_fd(),
        ack_read.as_raw_fd(),
    ];
    keep.extend_from_slice(context.inherit_fds);
    if relays.len() > MAX_RELAYS {
        let count = relays.len();
        return Err(Error::msg(format!("{count} descriptors to relay, more than {MAX_RELAYS}")));
    }
    let mut relay_keep: Vec<RawFd> =
        relays.iter().flat_map(|relay| [relay.fds.ours, relay.fds.our_end]).collect();
    relay_keep.sort_unstable();
    keep.extend_from_slice(&relay_keep);
    keep.extend(relays.iter().map(|relay| relay.fds.tree_end));
    keep.retain(|&fd| fd > libc::STDERR_FILENO);
    keep.sort_unstable();
    keep.dedup();
    let mut swrk = SwrkCommand::new(context.bin, criu_socket.as_raw_fd(), context.inherit_fds)?;
    swrk.as_user = context.as_user.clone();
    let plan = PidnsPlan {
        swrk,
        socket: socket.as_raw_fd(),
        criu_socket: criu_socket.as_raw_fd(),
        request: context.request,
        report_write: report_write.as_raw_fd(),
        ack_read: ack_read.as_raw_fd(),
        keep,
        last_pid: pids.iter().max().copied().unwrap_or(1).to_string().into_bytes(),
        last_pid_required: pids.iter().any(|&pid| pid < FIRST_PIDS_OF_A_NAMESPACE),
        notice_go: super::proto::notify_answer(true),
        notice_refused: super::proto::notify_answer(false),
        relays: relays.iter().map(|relay| relay.fds).collect(),
        relay_keep,
    };
    // SAFETY: the child runs run_holder, which only makes system calls on `plan`.
    let holder = unsafe { libc::fork() };
    if holder == 0 {
        // SAFETY: in the freshly forked child.
        unsafe { run_holder(&plan) }
    }
    if holder < 0 {
        return Err(Error::io("fork for a new PID namespace", io::Error::last_os_error()));
    }
    // Only the init keeps these; the report pipe then ends when the init has reported.
    drop((socket, criu_socket, report_write, ack_read));
    // Only the holder and the tree: a relay from the tree ends when the tree has ended.
    for relay in relays {
        drop((relay.ours, relay.tree_end, relay.our_end));
    }
    let report_read = File::from(report_read);
    let mut deadline = context.deadline;
    let mut header = [0u8; REPORT_HEADER];
    let got = loop {
        match rpc::readable_before(report_read.as_raw_fd(), deadline) {
            Ok(true) => {}
            Ok(false) => {
                // The namespace ends with its init, and everything in it (CRIU included).
                let doomed = children(holder).first().copied().unwrap_or(holder);
                // SAFETY: plain kill of our child or its child, not yet reaped.
                unsafe { libc::kill(doomed, libc::SIGKILL) };
                drop(ack_write);
                let _ = rpc::wait_exit_code(holder);
                return Err(context.stalled());
            }
            Err(e) => {
                drop(ack_write);
                let _ = rpc::wait_exit_code(holder);
                return Err(Error::io("waiting for the restore helper's report", e));
            }
        }
        // The init writes a header in one write (atomic on a pipe); a Held header comes
        // alone, CRIU's answer follows a Done one.
        let got = (&report_read).read(&mut header).unwrap_or(0);
        if got < REPORT_HEADER || parse_step(&header) != Some(Step::Held) {
            break got;
        }
        let started = Instant::now();
        let held = outer_pid(holder, pids[0]).and_then(|pid| {
            let held = Restored { pid, pid_in_ns: pids[0], new_pidns: true, waiter: holder };
            context.check_held(&held)
        });
        deadline = deadline.map(|deadline| deadline + started.elapsed());
        let verdict = [u8::from(held.is_ok())];
        if let Err(refusal) = held.and_then(|()| {
            rpc::write_all(ack_write.as_raw_fd(), &verdict).map_err(|errno| {
                Error::io("releasing the restored tree", io::Error::from_raw_os_error(errno))
            })
        }) {
            // Without its verdict the init fails the restore, kills what is left of the
            // namespace and exits.
            drop(ack_write);
            let _ = rpc::wait_exit_code(holder);
            return Err(refusal);
        }
    };
    let mut report = header[..got].to_vec();
    let read = (&report_read).read_to_end(&mut report);
    let found = read
        .map_err(|e| Error::io("reading the restore helper's report", e))
        .and_then(|_| parse_report(context, &report))
        .and_then(|response| context.restored_pid(&response))
        .and_then(|pid_in_ns| Ok((outer_pid(holder, pid_in_ns)?, pid_in_ns)));
    match found {
        Ok((pid, pid_in_ns)) => {
            // The acknowledgement tells the init which child is the task to wait for.
            let acked = rpc::write_all(ack_write.as_raw_fd(), &pid_in_ns.to_ne_bytes());
            drop(ack_write);
            match acked {
                Ok(()) => Ok(Restored { pid, pid_in_ns, new_pidns: true, waiter: holder }),
                Err(errno) => {
                    let _ = rpc::wait_exit_code(holder);
                    Err(Error::io("acknowledging the restore", io::Error::from_raw_os_error(errno)))
                }
            }
        }
        Err(e) => {
            // Without an acknowledgement the init kills whatever it restored and exits.
            drop(ack_write);
            let _ = rpc::wait_exit_code(holder);
            Err(e)
        }
    }
}

/// The step of a report header.
fn parse_step(header: &[u8]) -> Option<Step> {
    let step = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
    Step::ALL.into_iter().find(|s| *s as u32 == step)
}

fn parse_report(context: &RestoreContext, report: &[u8]) -> Result<Response> {
    if report.len() < REPORT_HEADER {
        let what = &context.what;
        return Err(Error::msg(format!(
            "criu {what}: the namespace helper ended without a report"
        )));
    }
    let (header, answer) = report.split_at(REPORT_HEADER);
    let errno = i32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    match parse_step(header) {
        Some(Step::Done) => Response::decode(answer),
        Some(Step::SpawnCriu) => Err(rpc::spawn_error(context.bin, errno)),
        Some(Step::SendRequest) => Err(rpc::exchange_error("sending the request to", errno)),
        Some(Step::ReceiveAnswer) => Err(rpc::exchange_error("reading the answer of", errno)),
        Some(step) => {
            let code = if errno == libc::EPERM { codes::OPAL_ERR_PERM } else { codes::OPAL_ERROR };
            let err = io::Error::from_raw_os_error(errno);
            Err(Error::new(
                code,
                format!("criu {}: {} failed: {err}", context.what, step.describe()),
            ))
        }
        None => Err(Error::msg(format!(
            "criu {}: garbled report from the namespace helper",
            context.what
        ))),
    }
}

/// Kills what a stalled restore in our namespace created: the root task, if it is our
/// child (CRIU got to create it), and its descendants; reaps the root.
fn kill_partial_restore(root: i32) {
    let own = std::process::id() as i32;
    let parent = std::fs::read_to_string(format!("/proc/{root}/stat"))
        .ok()
        .and_then(|stat| stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(1)?.parse().ok());
    if parent != Some(own) {
        return;
    }
    for pid in tree(root) {
        // SAFETY: plain kill of our unreaped child and its descendants, found just now.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = rpc::wait_exit_code(root);
}

/// The restored task's PID in our namespace: the child of the holder's init whose
/// innermost PID is `pid_in_ns`.
fn outer_pid(holder: libc::pid_t, pid_in_ns: i32) -> Result<i32> {
    let not_found = || {
        Error::msg(format!(
            "restored process {pid_in_ns} not found under namespace holder {holder}"
        ))
    };
    let init = *children(holder).first().ok_or_else(not_found)?;
    children(init)
        .into_iter()
        .find(|&child| ns_pids(child).last() == Some(&pid_in_ns))
        .ok_or_else(not_found)
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<_>>())
        .collect()
}

/// The `NSpid:` line of /proc/PID/status: the PID in each namespace, outermost first.
pub(crate) fn ns_pids(pid: i32) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map(|pids| pids.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// Writes the report header (and CRIU's answer). Async-signal-safe.
fn report(fd: RawFd, step: Step, errno: c_int, answer: &[u8]) {
    let [s0, s1, s2, s3] = (step as u32).to_ne_bytes();
    let [e0, e1, e2, e3] = errno.to_ne_bytes();
    if rpc::write_all(fd, &[s0, s1, s2, s3, e0, e1, e2, e3]).is_ok() {
        let _ = rpc::write_all(fd, answer);
    }
}

/// Whether a message of criu swrk is a notification: its type (field 1, varint) comes
/// first, as protobuf-c writes fields in order. Allocation-free, for the init.
fn is_notice(message: &[u8]) -> bool {
    message.starts_with(&[1 << 3, ReqType::NOTIFY.0 as u8])
}

/// Whether a notification names the `pre-resume` step (its only string). Allocation-free.
fn names_pre_resume(notice: &[u8]) -> bool {
    notice.windows(PRE_RESUME.len()).any(|window| window == PRE_RESUME.as_bytes())
}

/// Fills `buffer` from `fd`; false at end of file or on an error. Async-signal-safe.
fn read_full(fd: RawFd, buffer: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buffer.len() {
        // SAFETY: the rest of buffer is valid for writes.
        let n = unsafe { libc::read(fd, buffer[got..].as_mut_ptr().cast(), buffer.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || rpc::errno() != libc::EINTR {
            return false;
        }
    }
    true
}

/// Reports a failed step and exits (holder and init only). Async-signal-safe.
fn fail(plan: &PidnsPlan, step: Step, errno: c_int) -> ! {
    report(plan.report_write, step, errno, &[]);
    // SAFETY: _exit ends this forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(HELPER_FAILED) }
}

/// Closes descriptors `first..=last`. Async-signal-safe.
fn close_range(first: RawFd, last: RawFd) {
    // SAFETY: close_range only closes descriptors of this (forked) process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as c_uint, last as c_uint, 0) };
    if rc != 0 {
        // Kernels before 5.9: one by one, up to the descriptor limit.
        // SAFETY: sysconf has no preconditions.
        let limit = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(0, 1 << 20) as RawFd;
        for fd in first..=last.min(limit - 1) {
            // SAFETY: closing a descriptor of this process, open or not.
            unsafe { libc::close(fd) };
        }
    }
}

/// Closes every descriptor above 2 that is not in `keep` (sorted). Async-signal-safe.
/// Points fds 0–2 at /dev/null, so a long-lived helper does not hold the caller's
/// terminal or pipes open (`pid=$(opal-restart --fork …)` would never see EOF).
/// Async-signal-safe.
fn detach_stdio() {
    // SAFETY: open/dup2/close on this process's own descriptors.
    unsafe {
        let null = libc::open(b"/dev/null\0".as_ptr().cast(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..=libc::STDERR_FILENO {
                libc::dup2(null, fd);
            }
            if null > libc::STDERR_FILENO {
                libc::close(null);
            }
        }
    }
}

fn close_all_except(keep: &[RawFd]) {
    let mut next = libc::STDERR_FILENO + 1;
    for &fd in keep {
        if fd > next {
            close_range(next, fd - 1);
        }
        next = next.max(fd + 1);
    }
    close_range(next, RawFd::MAX);
}

/// Copies through the relays until each is done: one from the tree once no writer is
/// left (the tree has ended), one to the tree once our side ends or no reader is left.
/// A failed write ends a relay, so the tree's next write fails as it would have on our
/// descriptor. Our side is a file or a device, where reads and writes do not wait.
/// Async-signal-safe.
fn run_relays(relays: &[RelayFds]) {
    const EMPTY: libc::pollfd = libc::pollfd { fd: -1, events: 0, revents: 0 };
    let mut polls = [EMPTY; MAX_RELAYS];
    for (poll, relay) in polls.iter_mut().zip(relays) {
        let events = if relay.inbound { libc::POLLOUT } else { libc::POLLIN };
        *poll = libc::pollfd { fd: relay.our_end, events, revents: 0 };
    }
    // PIPE_BUF: a write of this much into a pipe that polls writable does not wait.
    let mut buffer = [0u8; 4096];
    // SAFETY: system calls on this process's own descriptors and buffers. Writes to a
    // pipe without readers fail with EPIPE instead of ending the holder.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        while polls.iter().any(|poll| poll.fd >= 0) {
            if libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) < 0 {
                if rpc::errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            for (poll, relay) in polls.iter_mut().zip(relays) {
                if poll.fd < 0 || poll.revents == 0 {
                    continue;
                }
                let (from, to) = if relay.inbound {
                    (relay.ours, relay.our_end)
                } else {
                    (relay.our_end, relay.ours)
                };
                let gone = relay.inbound && poll.revents & (libc::POLLERR | libc::POLLHUP) != 0;
                let done = gone || {
                    let n = libc::read(from, buffer.as_mut_ptr().cast(), buffer.len());
                    match n {
                        0 => true,
                        n if n < 0 => rpc::errno() != libc::EINTR,
                        n => rpc::write_all(to, &buffer[..n as usize]).is_err(),
                    }
                };
                if done {
                    libc::close(relay.ours);
                    libc::close(relay.our_end);
                    poll.fd = -1;
                }
            }
        }
    }
}

/// Default signal handling for a forked child that does not exec (holder and init):
/// the caller's handlers, say a SIGCHLD handler that reaps, must not run there.
/// Ignored signals stay ignored, as across exec, except SIGCHLD, which waitpid needs.
/// Async-signal-safe.
fn reset_signals() {
    // SAFETY: sigaction, signal and sigprocmask on this process's own signal state;
    // invalid signal numbers just fail.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        for signal in 1..=64 {
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_IGN
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// The holder: enters new PID and mount namespaces, forks the init and passes its exit
/// status on.
///
/// # Safety
/// Only in a freshly forked child; async-signal-safe.
unsafe fn run_holder(plan: &PidnsPlan) -> ! {
    reset_signals();
    close_all_except(&plan.keep);
    // SAFETY: system calls on this child's own state.
    unsafe {
        // CRIU hands the tree what the request names: the pipe in place of our descriptor.
        for relay in &plan.relays {
            if libc::dup2(relay.tree_end, relay.handed) < 0 {
                fail(plan, Step::Relay, rpc::errno());
            }
        }
        if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) != 0 {
            fail(plan, Step::Unshare, rpc::errno());
        }
        let init = libc::fork();
        if init == 0 {
            run_init(plan);
        }
        if init < 0 {
            fail(plan, Step::ForkInit, rpc::errno());
        }
        // The holder needs only its relays; the report pipe must end with the init.
        close_all_except(&plan.relay_keep);
        detach_stdio();
        run_relays(&plan.relays);
        libc::_exit(rpc::wait_exit_code(init).unwrap_or(HELPER_FAILED));
    }
}

/// PID 1 of the new namespace: restore, report, wait for the acknowledgement, reap.
///
/// # Safety
/// Only in a freshly forked child; async-signal-safe.
unsafe fn run_init(plan: &PidnsPlan) -> ! {
    // SAFETY: system calls on this child's own state; the buffers are ours.
    unsafe {
        // The relays' other ends are the holder's: the tree's output must see no reader
        // left once the holder is gone, and our input its end once the tree is.
        for relay in &plan.relays {
            for fd in [relay.ours, relay.tree_end, relay.our_end] {
                libc::close(fd);
            }
        }
        // Our /proc must not propagate to the caller's mount namespace.
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(
            std::ptr::null(),
            b"/\0".as_ptr().cast(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            fail(plan, Step::MountPrivate, rpc::errno());
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            b"proc\0".as_ptr().cast(),
            b"/proc\0".as_ptr().cast(),
            b"proc\0".as_ptr().cast(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            fail(plan, Step::MountProc, rpc::errno());
        }
        let last_pid = libc::open(
            b"/proc/sys/kernel/ns_last_pid\0".as_ptr().cast(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if (last_pid < 0
            || libc::write(last_pid, plan.last_pid.as_ptr().cast(), plan.last_pid.len())
                != plan.last_pid.len() as isize)
            && plan.last_pid_required
        {
            fail(plan, Step::SetLastPid, rpc::errno());
        }
        if last_pid >= 0 {
            libc::close(last_pid);
        }
        // A session inside: a restored root that did not lead its own session (a shell
        // job) joins CRIU's, which was the caller's, outside, and CRIU cannot dump a
        // process whose session leader is outside its namespace.
        if libc::setsid() < 0 {
            fail(plan, Step::NewSession, rpc::errno());
        }
        let criu = match rpc::spawn_swrk(&plan.swrk, Helper::Child) {
            Ok(pid) => pid,
            Err(errno) => fail(plan, Step::SpawnCriu, errno),
        };
        libc::close(plan.criu_socket);
        if let Err(errno) = rpc::send_message(plan.socket, plan.request) {
            fail(plan, Step::SendRequest, errno);
        }
        let mut answer = [0u8; rpc::RESPONSE_CAPACITY];
        let len = loop {
            let len = match rpc::receive_message(plan.socket, &mut answer) {
                Ok(len) => len,
                Err(errno) => fail(plan, Step::ReceiveAnswer, errno),
            };
            if !is_notice(&answer[..len]) {
                break len;
            }
            let mut go = true;
            if names_pre_resume(&answer[..len]) {
                report(plan.report_write, Step::Held, 0, &[]);
                let mut verdict = [0u8; 1];
                go = read_full(plan.ack_read, &mut verdict) && verdict[0] == 1;
            }
            let ack = if go { &plan.notice_go } else { &plan.notice_refused };
            if let Err(errno) = rpc::send_message(plan.socket, ack) {
                fail(plan, Step::SendRequest, errno);
            }
        };
        // criu swrk exits after answering; then the restored task is our only child.
        let _ = rpc::wait_exit_code(criu);
        report(plan.report_write, Step::Done, 0, &answer[..len]);
        libc::close(plan.report_write);

        let mut ack = [0u8; 4];
        let acked = read_full(plan.ack_read, &mut ack);
        close_all_except(&[]);
        detach_stdio();
        if !acked {
            // The caller gave up (the restore failed, or it died): end the namespace.
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(HELPER_FAILED);
        }
        let task = i32::from_ne_bytes(ack);
        // Reap everything (orphans in the namespace come to us); end with the task.
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == task {
                libc::_exit(rpc::exit_code(status));
            }
            if pid < 0 && rpc::errno() != libc::EINTR {
                libc::_exit(HELPER_FAILED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pstree(entries: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&PSTREE_MAGIC.to_le_bytes());
        for entry in entries {
            bytes.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            bytes.extend_from_slice(entry);
        }
        bytes
    }

    #[test]
    fn reads_pids_and_threads_from_pstree() {
        // As written by CRIU 4.1.1 for pid 10053: pid, ppid 0, pgid, sid, threads [10053].
        let root: &[u8] =
            &[0x08, 0xc5, 0x4e, 0x10, 0x00, 0x18, 0xc5, 0x4e, 0x20, 0xc5, 0x4e, 0x28, 0xc5, 0x4e];
        assert_eq!(parse_pstree(&pstree(&[root])).unwrap(), [10053]);
        // A child (pid 7, ppid 10053) with a second thread 8.
        let child: &[u8] = &[0x08, 0x07, 0x10, 0xc5, 0x4e, 0x28, 0x07, 0x28, 0x08];
        assert_eq!(parse_pstree(&pstree(&[root, child])).unwrap(), [10053, 7, 8]);
    }

    #[test]
    fn rejects_what_is_not_a_pstree() {
        assert!(parse_pstree(b"").is_err());
        assert!(parse_pstree(&pstree(&[])).is_err(), "no process");
        let mut truncated = pstree(&[&[0x08, 0x07]]);
        truncated.pop();
        assert!(parse_pstree(&truncated).is_err());
        let mut wrong = pstree(&[&[0x08, 0x07]]);
        wrong[4] ^= 1;
        assert!(parse_pstree(&wrong).is_err());
    }

    #[test]
    fn a_zombie_holding_a_pid_is_named_with_its_parent() {
        let own = std::process::id();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Holder::of(pid).is_some_and(|holder| holder.zombie) && Instant::now() < deadline {
            std::thread::sleep(PID_POLL_INTERVAL);
        }
        let named = describe_holder(pid, Holder::of(pid), Duration::from_secs(3));
        child.wait().unwrap();
        let zombie =
            format!("PID {pid} is held by a zombie (PPID {own}) that was not reaped within 3s");
        assert_eq!(named, zombie);
        let me = describe_holder(own as i32, Holder::of(own as i32), Duration::ZERO);
        assert!(me.starts_with(&format!("PID {own} is taken by ")), "{me}");
    }

    #[test]
    fn own_pid_is_in_use_and_a_huge_one_is_not() {
        assert!(pid_in_use(std::process::id() as i32));
        assert!(!pid_in_use(i32::MAX));
        assert!(!pid_in_use(0));
    }

    #[test]
    fn a_session_id_counts_as_a_pid_in_use() {
        let stat = "4242 (a (b) c) S 1 4240 4239 0 -1 4194560 100";
        assert_eq!(group_and_session(stat), Some((4240, 4239)));
        assert_eq!(group_and_session("4242 (x"), None);
        // A session whose leader has exited: its ID is no process, yet still in use.
        let mut leader = std::process::Command::new("sh");
        leader
            .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $$ $!"])
            .stdout(std::process::Stdio::piped());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut leader, || {
                libc::setsid();
                Ok(())
            });
        }
        let out = leader.output().unwrap();
        let pids: Vec<i32> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let (sid, member) = (pids[0], pids[1]);
        let leader_gone = !Path::new(&format!("/proc/{sid}")).exists();
        let in_use = pid_in_use(sid);
        // SAFETY: member is the sleep the shell started; it is ours to end.
        unsafe { libc::kill(member, libc::SIGKILL) };
        assert!(leader_gone, "session leader {sid} still there");
        assert!(in_use, "session {sid} of {member} not seen as in use");
    }

    #[test]
    fn an_image_of_a_pid_1_is_refused_for_a_new_pid_namespace() {
        let dir = rpc::TempDir::new("pid1-image").unwrap();
        // pid 1, ppid 0, pgid 1, sid 1, threads [1].
        let root: &[u8] = &[0x08, 0x01, 0x10, 0x00, 0x18, 0x01, 0x20, 0x01, 0x28, 0x01];
        std::fs::write(dir.path().join("pstree.img"), pstree(&[root])).unwrap();
        let bin = CriuBinary { path: "/nonexistent/criu".into(), version: (4, 1, 1) };
        let opts = RestoreOptions {
            images_dir: dir.path(),
            log_file: "restore.log",
            log_level: 2,
            shell_job: true,
            ext_unix_sk: false,
            tcp_established: false,
            file_locks: false,
            inherit_fds: &[],
            inherit_stdin: None,
            new_pidns: true,
            before_resume: None,
            timeout: None,
            as_owner: None,
        };
        let err = restore(&bin, &opts).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_SUPPORTED);
        assert!(err.message().contains("was PID 1 of its PID namespace"), "{err}");
    }

    #[test]
    fn reads_the_groups_of_a_core_image() {
        // creds: uid 1000, gid 1000, groups 27 and 1000; in thread_core, in core_entry.
        let creds: &[u8] = &[0x08, 0xe8, 0x07, 0x10, 0xe8, 0x07, 0x70, 27, 0x70, 0xe8, 0x07];
        let thread = [&[0x52, creds.len() as u8][..], creds].concat();
        let entry = [&[0x08, 0x01, 0x2a, thread.len() as u8][..], &thread].concat();
        let mut image = Vec::new();
        image.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        image.extend_from_slice(&CORE_MAGIC.to_le_bytes());
        image.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        image.extend_from_slice(&entry);
        assert_eq!(parse_core_groups(&image).unwrap(), [27, 1000]);
        image[4] ^= 1;
        assert!(parse_core_groups(&image).unwrap_err().message().contains("wrong magic"));
        assert!(parse_core_groups(&image[..10]).is_err());
    }

    #[test]
    fn missing_images_are_a_clear_error() {
        let err = image_pids(Path::new("/nonexistent/images")).unwrap_err();
        assert!(err.message().contains("no CRIU images in /nonexistent/images"), "{err}");
    }

    #[test]
    fn only_what_lies_on_a_mount_is_relayed() {
        let (read, write) = pipe().unwrap();
        let (socket, _peer) = rpc::socket_pair().unwrap();
        let null = File::open("/dev/null").unwrap();
        let file = File::open("/proc/self/exe").unwrap();
        assert!(!Relay::needed_for(read.as_raw_fd()) && !Relay::needed_for(write.as_raw_fd()));
        assert!(!Relay::needed_for(socket.as_raw_fd()));
        let terminal = File::options().read(true).write(true).open("/dev/ptmx").unwrap();
        assert!(!Relay::needed_for(terminal.as_raw_fd()), "a terminal");
        assert!(Relay::needed_for(null.as_raw_fd()) && Relay::needed_for(file.as_raw_fd()));
        let outbound = Relay::new(file.as_raw_fd(), false).unwrap();
        // SAFETY: fcntl only queries the descriptors.
        let mode = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_ACCMODE;
        assert_eq!(mode(outbound.fds.tree_end), libc::O_WRONLY, "the tree writes");
        let inbound = Relay::new(file.as_raw_fd(), true).unwrap();
        assert_eq!(mode(inbound.fds.tree_end), libc::O_RDONLY, "the tree reads");
        assert_eq!(inbound.fds.handed, file.as_raw_fd());
        assert_ne!(inbound.fds.ours, file.as_raw_fd());
    }

    #[test]
    fn reads_our_own_ns_pids() {
        let own = std::process::id() as i32;
        assert_eq!(ns_pids(own).last(), Some(&own));
    }
}

//! The image follower: a process that hashes the page images while CRIU writes them,
//! so that publishing a snapshot need not read them again afterwards.
//!
//! Hashing cannot happen inside the process that dumps itself: CRIU freezes every
//! one of its threads for the whole write. The follower is started like the `criu
//! swrk` helper (detached, sharing our memory only until it execs, so it is not in
//! the dumped tree and copies no page tables): it is `opal-checkpoint` in its hidden
//! mode ([`FOLLOW_MODE`]), found next to this library. It gets the snapshot
//! directory as an inherited descriptor (no path, nothing followed), runs as the
//! process's user, opens only `pages-*.img` files there with `O_NOFOLLOW`, and
//! hashes each as it grows (new files from inotify, growth looked at every 2 ms).
//! CRIU writes a page image only at its end: one open with `O_TRUNC`, then `splice`
//! at the file position (criu/page-xfer.c, `write_pages_loc`); the other images are
//! small, written through buffers, and hashed at publication. It is off by default
//! (`crs_criu_follow_images`): on a small machine its reading made CRIU's freeze
//! longer (bench/README.md, session 5).
//!
//! The process holds no descriptor of it during the dump. Once CRIU has answered, the
//! process creates the empty records file ([`PREHASHED_FILE`]); the follower then
//! reads each page image to its end, takes a last look at it (`fstat`), writes its
//! records into that file in one write and exits. The process waits for the records
//! at most [`RECORDS_LIMIT`]; a follower that died, or is late, means the publish
//! hashes everything, as without one (the records file is removed first, so a late
//! write goes nowhere). Publishing trusts a record only for a file that still matches
//! its last look ([`crate::snapshot::prehashed`]).

use super::rpc::{self, Helper, SwrkCommand};
use crate::owner::Owner;
use crate::snapshot::prehashed::{self, GrowingFileHash, PREHASHED_FILE};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The hidden first argument of `opal-checkpoint` that runs the follower:
/// `opal-checkpoint --follow-images DIR_FD PID`.
pub(crate) const FOLLOW_MODE: &str = "--follow-images";

/// Where a tool makes the records file before the owner gets it under its name.
const PREHASHED_STAGING: &str = ".opalcrs-prehashed.new";

/// The tool that runs the follower.
const PROGRAM: &str = "opal-checkpoint";

/// How long the process waits for the records once CRIU has answered. The follower
/// keeps up with CRIU's writing, so it is done in milliseconds; hashing 512 MiB afresh
/// takes ~110 ms here.
const RECORDS_LIMIT: Duration = Duration::from_secs(1);

/// A follower that sees nothing new for this long gives up (the process always either
/// asks for the records, removes the directory or ends long before).
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// A process with less resident memory than this is hashed after its dump: starting
/// the follower and waiting for its records (about 1.5 ms here) would cost more than
/// hashing its page images then (~5 GB/s).
const FOLLOW_MIN_RESIDENT: u64 = 32 << 20;

/// Whether the follower follows the file `name`: CRIU's page images, `pages-<N>.img`.
fn is_followed(name: &str) -> bool {
    name.strip_prefix("pages-")
        .and_then(|rest| rest.strip_suffix(".img"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether process `pid` is large enough for a follower to pay
/// ([`FOLLOW_MIN_RESIDENT`]); a process whose size cannot be read is.
pub(crate) fn worth_following(pid: i32) -> bool {
    let own = i64::from(pid) == i64::from(std::process::id());
    let path = if own { "/proc/self/statm".to_string() } else { format!("/proc/{pid}/statm") };
    let resident = std::fs::read_to_string(path)
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    resident.map_or(true, |pages| pages * page >= FOLLOW_MIN_RESIDENT)
}

/// Where the follower's program is: next to this library (the build directory, or a
/// directory with the library and the tools), or in `../bin` of an installed `lib`.
fn program() -> Option<PathBuf> {
    let ours = crate::elf::loaded_from()?;
    let dir = ours.parent()?;
    [dir.join(PROGRAM), dir.join("../bin").join(PROGRAM)].into_iter().find(|candidate| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A running follower, known by PID and start time only: no descriptor of it is held
/// while CRIU dumps the process.
pub(crate) struct Follower {
    pid: i32,
    start_time: u64,
}

impl Follower {
    /// Starts the follower of the snapshot directory `dir` into which process `dumped`
    /// (this one) is about to be dumped. None (logged) when it cannot be started: the
    /// publish then hashes every file.
    pub(crate) fn start(dir: &Path, dumped: i32) -> Option<Follower> {
        match open_dir(dir) {
            Ok(fd) => Follower::spawn(&fd, dumped, None),
            Err(e) => {
                log::debug!(target: "crs", "crs:criu: image follower: cannot open {}: {e}", dir.display());
                None
            }
        }
    }

    /// For a tool dumping process `dumped` of user `owner` on its behalf into the
    /// directory `dir` (a descriptor, checked to be the owner's): the follower runs
    /// as that user, without capabilities, like CRIU.
    pub(crate) fn start_as(dir: &OwnedFd, dumped: i32, owner: (u32, u32)) -> Option<Follower> {
        Follower::spawn(dir, dumped, Some(Owner::without_groups(owner.0, owner.1)))
    }

    fn spawn(dir: &OwnedFd, dumped: i32, as_user: Option<Owner>) -> Option<Follower> {
        let Some(program) = program() else {
            log::debug!(target: "crs", "crs:criu: no {PROGRAM} next to the library; the images are hashed after the dump");
            return None;
        };
        let started = || -> io::Result<Follower> {
            let path = CString::new(program.as_os_str().as_bytes())?;
            let fd = dir.as_raw_fd();
            let args = [FOLLOW_MODE.to_string(), fd.to_string(), dumped.to_string()]
                .map(|arg| CString::new(arg).expect("no NUL"));
            let mut command = SwrkCommand::program(path, args.into(), fd);
            command.as_user = as_user.map(|owner| (owner, &[] as &'static [u32]));
            // SAFETY: `command` is fully prepared and its descriptor open.
            let pid = unsafe { rpc::spawn_swrk(&command, Helper::Detached) }
                .map_err(io::Error::from_raw_os_error)?;
            let start_time = crate::snapshot::series::start_time(pid)
                .ok_or_else(|| io::Error::other("it ended at once"))?;
            Ok(Follower { pid, start_time })
        };
        match started() {
            Ok(follower) => {
                log::debug!(target: "crs", "crs:criu: image follower started ({})", program.display());
                Some(follower)
            }
            Err(e) => {
                log::debug!(target: "crs", "crs:criu: cannot start the image follower {}: {e}; the images are hashed after the dump", program.display());
                None
            }
        }
    }

    /// Still running: the same process (start time), and not a zombie (its new parent
    /// may be slow to reap it).
    fn alive(&self) -> bool {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| stat.rsplit_once(") ")?.1.chars().next());
        crate::snapshot::series::start_time(self.pid) == Some(self.start_time)
            && state.is_some_and(|state| state != 'Z' && state != 'X')
    }

    /// [`collect`](Follower::collect) in the directory at `dir` (this process's own
    /// snapshot).
    pub(crate) fn collect_at(self, dir: &Path) {
        match open_dir(dir) {
            Ok(fd) => self.collect(&fd, dir, None),
            Err(e) => {
                log::debug!(target: "crs", "crs:criu: image follower: cannot open {}: {e}", dir.display())
            }
        }
    }

    /// After CRIU has answered: asks the follower for its records and waits for them in
    /// `dir` (shown as `shown`); the records file is given to `owner` when set. If they
    /// do not come, there is no records file left.
    pub(crate) fn collect(self, dir: &OwnedFd, shown: &Path, owner: Option<(u32, u32)>) {
        match self.wait_for_records(dir, owner) {
            Ok(count) => {
                log::debug!(target: "crs", "crs:criu: image follower hashed {count} page images while CRIU wrote them");
            }
            Err(why) => {
                // A follower still writing writes into the removed file.
                let name = CString::new(PREHASHED_FILE).expect("no NUL");
                // SAFETY: a NUL-terminated name relative to our directory descriptor.
                unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
                log::debug!(target: "crs", "crs:criu: image follower ({}): {why}; the images are hashed after the dump", shown.display());
            }
        }
    }

    fn wait_for_records(&self, dir: &OwnedFd, owner: Option<(u32, u32)>) -> Result<usize, String> {
        let deadline = Instant::now() + RECORDS_LIMIT;
        let flags =
            libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let records = match owner {
            None => open_at(dir, PREHASHED_FILE, flags, 0o600)
                .map_err(|e| format!("cannot create {PREHASHED_FILE}: {e}"))?,
            // Given to the owner before it appears under its name, so that the follower
            // (running as the owner) can write into it at once.
            Some((uid, gid)) => {
                let made = open_at(dir, PREHASHED_STAGING, flags, 0o600)
                    .map_err(|e| format!("cannot create {PREHASHED_STAGING}: {e}"))?;
                // SAFETY: fchown on a descriptor we own.
                let given = unsafe { libc::fchown(made.as_raw_fd(), uid, gid) } == 0;
                let (from, to) = (CString::new(PREHASHED_STAGING), CString::new(PREHASHED_FILE));
                let (from, to) = (from.expect("no NUL"), to.expect("no NUL"));
                // SAFETY: NUL-terminated names relative to our directory descriptor.
                let renamed = given
                    && unsafe {
                        libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr())
                    } == 0;
                if !renamed {
                    let err = io::Error::last_os_error();
                    // SAFETY: as above.
                    unsafe { libc::unlinkat(dir.as_raw_fd(), from.as_ptr(), 0) };
                    return Err(format!("cannot hand {PREHASHED_FILE} to uid {uid}: {err}"));
                }
                made
            }
        };
        // Polled, with back-off: the records come within a millisecond or so, and an
        // inotify instance would cost more (closing one waits for an RCU grace period,
        // measured at up to 20 ms here).
        let mut pause = Duration::from_micros(100);
        loop {
            // Looked at before reading: a follower that ended has written all it will.
            let alive = self.alive();
            // It writes all records at once; read them whole.
            let mut text = Vec::new();
            (&records)
                .seek(io::SeekFrom::Start(0))
                .and_then(|_| (&records).read_to_end(&mut text))
                .map_err(|e| format!("cannot read its records: {e}"))?;
            let parsed = std::str::from_utf8(&text).ok().and_then(prehashed::parse);
            if let Some(records) = parsed {
                return Ok(records.len());
            }
            if !alive {
                return Err("it ended without its records".to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no records within {RECORDS_LIMIT:?}"));
            }
            std::thread::sleep(left.min(pause));
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A regular file `name` of the directory `dir`, opened with `flags` (with O_CREAT:
/// created with `mode`).
fn open_at(dir: &OwnedFd, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let name = CString::new(name)?;
    // SAFETY: a NUL-terminated name relative to an open directory descriptor; the mode
    // is the variadic argument open takes with O_CREAT.
    let fd =
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// An inotify instance watching one directory (given as a descriptor).
struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    fn watch(dir: &OwnedFd, mask: u32) -> io::Result<Inotify> {
        // SAFETY: inotify_init1 has no preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The directory by its descriptor: /proc/self/fd/N names exactly what we hold.
        let path = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).expect("no NUL");
        let mask = mask | libc::IN_ONLYDIR;
        // SAFETY: a NUL-terminated path; our inotify descriptor.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inotify { fd })
    }

    /// The events there now (none when there are none): (mask, name).
    fn events(&self) -> Vec<(u32, OsString)> {
        let mut events = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        let header = std::mem::size_of::<libc::inotify_event>();
        loop {
            // SAFETY: reading into our buffer.
            let n = unsafe {
                libc::read(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len())
            };
            if n <= 0 {
                return events;
            }
            let mut at = 0;
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event here; read unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer[at..].as_ptr().cast()) };
                let name = &buffer[at + header..at + header + event.len as usize];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                events.push((event.mask, OsStr::from_bytes(name).to_os_string()));
                at += header + event.len as usize;
            }
        }
    }
}

/// `opal-checkpoint --follow-images DIR_FD PID`: follows the page images in the
/// directory open as DIR_FD while process PID is dumped into it (see the module).
/// Exits 0 when done or when there is nothing to do any more, 1 when following failed,
/// 2 on bad arguments.
pub(super) fn main(args: &[OsString]) -> i32 {
    let number =
        |arg: Option<&OsString>| arg.and_then(|a| a.to_str()).and_then(|a| a.parse::<i32>().ok());
    let (Some(dir_fd), Some(pid), 2) = (number(args.first()), number(args.get(1)), args.len())
    else {
        eprintln!("{PROGRAM} {FOLLOW_MODE}: an internal mode of the library; expected DIR_FD PID");
        return 2;
    };
    // SAFETY: fstat into a zeroed struct; any descriptor number is safe to ask about.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dir_fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        eprintln!("{PROGRAM} {FOLLOW_MODE}: descriptor {dir_fd} is not an open directory");
        return 2;
    }
    // SAFETY: the directory descriptor the library handed us, owned by nothing else here.
    let dir = unsafe { OwnedFd::from_raw_fd(dir_fd) };
    // Silent either way: its stderr is the program's, and the process notices a
    // follower that ended without records.
    match follow(&dir, pid) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// One page image being hashed as it grows.
struct Followed {
    name: String,
    file: File,
    hash: GrowingFileHash,
}

/// What the follower has found in the directory so far.
#[derive(Default)]
struct Found {
    followed: Vec<Followed>,
    /// The process asked for the records: CRIU is done.
    asked: bool,
}

impl Found {
    fn consider(&mut self, dir: &OwnedFd, name: &OsStr) {
        let Some(name) = name.to_str() else { return };
        if name == PREHASHED_FILE {
            self.asked = true;
        } else if is_followed(name) && !self.followed.iter().any(|f| f.name == name) {
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
            // One that cannot be opened is hashed at publication.
            if let Ok(file) = open_at(dir, name, flags, 0) {
                self.followed.push(Followed {
                    name: name.to_string(),
                    file,
                    hash: GrowingFileHash::new(),
                });
            }
        }
    }

    /// Looks at every name in the directory (at the start, and when events were lost).
    fn scan(&mut self, dir: &OwnedFd) {
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
            return;
        };
        for entry in entries.flatten() {
            self.consider(dir, &entry.file_name());
        }
    }

    /// Hashes what was appended to each file; a file that cannot be read is dropped
    /// (hashed at publication). Whether anything was.
    fn catch_up(&mut self) -> bool {
        let before: u64 = self.followed.iter().map(|f| f.hash.hashed()).sum();
        self.followed.retain_mut(|f| f.hash.catch_up(&f.file).is_ok());
        self.followed.iter().map(|f| f.hash.hashed()).sum::<u64>() != before
    }
}

fn follow(dir: &OwnedFd, pid: i32) -> io::Result<()> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if pidfd < 0 {
        // The process is gone: nobody will ask.
        return Ok(());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_DELETE_SELF;
    let inotify = Inotify::watch(dir, mask)?;
    let mut found = Found::default();
    found.scan(dir);
    let mut last_event = Instant::now();
    loop {
        if found.catch_up() {
            last_event = Instant::now();
        }
        if found.asked {
            return write_records(dir, found);
        }
        let mut fds = [
            libc::pollfd { fd: inotify.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // Page images are looked at every 2 ms: an inotify watch for their writes would
        // queue an event in CRIU's write path.
        let timeout = if found.followed.is_empty() { 1000 } else { 2 };
        // SAFETY: two valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::last_os_error());
        }
        if fds[1].revents != 0 {
            // The process ended during its dump.
            return Ok(());
        }
        if fds[0].revents == 0 {
            if last_event.elapsed() > IDLE_LIMIT {
                return Ok(());
            }
            continue;
        }
        last_event = Instant::now();
        for (mask, name) in inotify.events() {
            if mask & (libc::IN_DELETE_SELF | libc::IN_IGNORED) != 0 {
                // The snapshot was given up.
                return Ok(());
            }
            if mask & libc::IN_Q_OVERFLOW != 0 {
                found.scan(dir);
            } else if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                found.consider(dir, &name);
            }
        }
    }
}

/// Hashes every page image to its end and writes the records, in one write, into the
/// records file the process created (never a new one: if the process gave up waiting
/// and removed it, there is nothing to write into).
fn write_records(dir: &OwnedFd, mut found: Found) -> io::Result<()> {
    found.scan(dir);
    let mut records = Vec::new();
    for f in found.followed {
        if let Some(record) = f.hash.finish(&f.name, &f.file)? {
            records.push(record);
        }
    }
    let flags =
        libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let mut out = open_at(dir, PREHASHED_FILE, flags, 0)?;
    out.write_all(prehashed::render(&records).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_page_images_are_followed() {
        for name in ["pages-1.img", "pages-12345.img"] {
            assert!(is_followed(name), "{name}");
        }
        for name in [
            "pages-.img",
            "pages-1.img.tmp",
            "pagemap-1.img",
            "pages-1a.img",
            "xpages-1.img",
            PREHASHED_FILE,
        ] {
            assert!(!is_followed(name), "{name}");
        }
    }
}

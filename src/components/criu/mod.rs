//! `criu`: transparent checkpoints of the whole process through CRIU ≥ 4, spoken to
//! over its RPC protocol (`criu swrk`), so the library has no link-time dependency on
//! CRIU. The process dumps itself from its checkpoint phase and keeps running; the
//! restored image sees the same call return "restored". `opal-restart` restores the
//! image as its child, or into a fresh PID namespace when the original PID is taken.

pub mod behalf;
pub mod binary;
mod compat;
pub mod files;
mod follow;
pub mod proto;
pub mod restore;
pub mod rpc;

use crate::error::{Error, Result};
use crate::framework::{CheckpointJob, CheckpointOutcome, Component, RestartOutcome, RestartPlan};
use crate::params::Params;
use crate::snapshot::IdentityEntry;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

pub struct CriuComponent;

/// What fds 0–2 were at dump time, one `readlink` target per line.
const STDIO_FILE: &str = "stdio";
/// The log of the last failed dump, kept in the series.
const FAILED_LOG: &str = "criu-failed.log";

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn configured_binary(params: &Params) -> Option<PathBuf> {
    Some(params.str("crs_criu_binary")).filter(|p| !p.is_empty()).map(PathBuf::from)
}

fn find_binary(params: &Params) -> Result<binary::CriuBinary> {
    binary::find(configured_binary(params).as_deref())
}

impl Component for CriuComponent {
    fn name(&self) -> &'static str {
        "criu"
    }

    fn helper(&self, mode: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> Option<i32> {
        (mode == follow::FOLLOW_MODE).then(|| follow::main(args))
    }

    fn priority(&self, params: &Params) -> i64 {
        params.int("crs_criu_priority")
    }

    fn query(&self, params: &Params) -> std::result::Result<(), String> {
        find_binary(params).map(|_| ()).map_err(|e| e.message().to_string())
    }

    fn init(&self, params: &Params) -> Result<()> {
        let say = |label: &str, value: &dyn std::fmt::Display| log::debug!(target: "crs", "crs:criu: open: {label} = {value}");
        say("priority", &params.int("crs_criu_priority"));
        say("verbosity", &params.int("crs_criu_verbose"));
        say("log_file", &params.str("crs_criu_log"));
        say("log_level", &params.int("crs_criu_log_level"));
        for flag in [
            "tcp_established",
            "file_locks",
            "shell_job",
            "ext_unix_sk",
            "leave_running",
            "new_session",
        ] {
            say(flag, &u8::from(params.bool(&format!("crs_criu_{flag}"))));
        }
        say("network_lock", &params.choice("crs_criu_network_lock"));
        if params.bool("crs_criu_new_session") && !params.bool("opal_cr_is_tool") {
            leave_foreign_session();
        }
        log::debug!(target: "crs", "crs:criu: module_init()");
        Ok(())
    }

    fn needs_quiet_connections(&self) -> bool {
        true
    }

    /// CRIU holds the restored tree (its pre-resume step) until the check has passed.
    fn checks_while_restoring(&self) -> bool {
        true
    }

    fn restorable_here(&self, dir: &Path) -> Result<()> {
        check_identity(dir)?;
        compat::check(dir)
    }

    /// The executable and every mapped executable library: an image restores only
    /// onto the same files.
    fn identity(&self) -> Vec<IdentityEntry> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut paths: Vec<&str> = maps
            .lines()
            .filter(|line| line.split_whitespace().nth(1).is_some_and(|perms| perms.contains('x')))
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|path| path.starts_with('/'))
            .collect();
        paths.sort_unstable();
        paths.dedup();
        paths.into_iter().filter_map(|path| IdentityEntry::of(Path::new(path))).collect()
    }

    fn ends_process(&self, params: &Params) -> bool {
        !params.bool("crs_criu_leave_running")
    }

    fn checkpoint(&self, job: &mut CheckpointJob) -> Result<CheckpointOutcome> {
        let pid = std::process::id() as i32;
        log::debug!(target: "crs", "crs:criu: checkpoint({pid}, ---)");
        let started = std::time::Instant::now();
        let bin = find_binary(job.params)?;
        let privileged = binary::privileged();
        if !privileged && job.dump_helper.is_none() {
            return Err(Error::new(
                crate::codes::OPAL_ERR_PERM,
                "criu: this process may not dump itself: CRIU needs root or CAP_CHECKPOINT_RESTORE (with CAP_SYS_PTRACE) \
                 in the checkpointed process; run it as root or grant the capabilities, or run opal-checkpoint as root, \
                 which then dumps it",
            ));
        }
        // CRIU checks this from inside the process and fails late, tersely.
        // SAFETY: getsid has no preconditions.
        if unsafe { libc::getsid(0) } == 0 {
            return Err(Error::new(
                crate::codes::OPAL_ERR_NOT_SUPPORTED,
                format!(
                    "criu dump of process {pid}: its session leader is outside its PID namespace, \
                     and CRIU cannot dump such a process; start it in a session of its own \
                     (setsid), or keep crs_criu_new_session=1 so that opal_init does"
                ),
            ));
        }
        if privileged {
            bin.check()?;
        }
        let checked = started.elapsed();
        let network_lock = network_lock(job.params, pid)?;
        let stdio: Vec<String> = (0..3)
            .map(|fd| {
                std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            })
            .collect();
        std::fs::write(job.dir.join(STDIO_FILE), stdio.join("\n") + "\n")
            .map_err(|e| Error::io(format!("writing {}", job.dir.join(STDIO_FILE).display()), e))?;
        let log_file = job.params.str("crs_criu_log").to_string();
        log::debug!(target: "crs", "crs:criu: opening snapshot directory {}", job.dir.display());
        let options = rpc::DumpOptions {
            pid,
            images_dir: job.dir,
            log_file: &log_file,
            log_level: job.params.int("crs_criu_log_level") as i32,
            // The process always keeps running: a snapshot is never lost because the
            // process died before publishing it (`--term` ends it afterwards).
            leave_running: true,
            shell_job: job.params.bool("crs_criu_shell_job"),
            ext_unix_sk: job.params.bool("crs_criu_ext_unix_sk"),
            tcp_established: job.params.bool("crs_criu_tcp_established"),
            file_locks: job.params.bool("crs_criu_file_locks"),
            network_lock,
            external: &[],
            as_user: None,
        };
        let prepared = started.elapsed();
        // Only for a self-dump: a tool dumping on our behalf follows on a thread.
        let follow = job.params.bool("crs_criu_follow_images") && follow::worth_following(pid);
        let follower =
            (privileged && follow).then(|| follow::Follower::start(job.dir, pid)).flatten();
        let dumped = match job.dump_helper.filter(|_| !privileged) {
            None => rpc::dump(&bin, &options),
            Some(helper) => {
                log::debug!(target: "crs", "crs:criu: asking the tool to dump (through {})", helper.rendezvous.display());
                behalf::ask(helper, &options, follow)
            }
        };
        match dumped {
            Ok(rpc::DumpOutcome::Dumped) => {
                let dumped_at = started.elapsed();
                if let Some(follower) = follower {
                    follower.collect_at(job.dir);
                }
                let followed_at = started.elapsed();
                files::record(job.dir)?;
                compat::record(job.dir, &self.identity())?;
                // Phases of a checkpoint, for bench/run.sh (milliseconds since the start).
                log::debug!(target: "crs", "crs:criu: phases: checked {:.2} ms, prepared {:.2} ms, dumped {:.2} ms, followed {:.2} ms, files recorded {:.2} ms",
                    ms(checked), ms(prepared), ms(dumped_at), ms(followed_at), ms(started.elapsed()));
                Ok(CheckpointOutcome::Continue)
            }
            Ok(rpc::DumpOutcome::Restored) => Ok(CheckpointOutcome::Restarted),
            Err(e) => {
                let Some(series) = job.dir.parent() else { return Err(e) };
                let (log, kept) = (job.dir.join(&log_file), series.join(FAILED_LOG));
                if std::fs::copy(&log, &kept).is_err() {
                    return Err(e);
                }
                // The temporary snapshot goes with the failure: name the copy that stays.
                let message =
                    e.message().replace(&log.display().to_string(), &kept.display().to_string());
                Err(Error::new(e.code(), message))
            }
        }
    }

    fn restart(&self, plan: &RestartPlan, spawn_child: bool) -> Result<RestartOutcome> {
        start_reading_images(&plan.dir);
        let bin = find_binary(&plan.params).map_err(|e| {
            Error::new(
                e.code(),
                format!("snapshot {} needs CRIU to restore: {}", plan.dir.display(), e.message()),
            )
        })?;
        if !binary::privileged() {
            return Err(Error::new(
                crate::codes::OPAL_ERR_PERM,
                format!(
                    "cannot restore {}: a CRIU restore needs root or CAP_CHECKPOINT_RESTORE \
                     (with CAP_SYS_PTRACE); run opal-restart as root",
                    plan.dir.display()
                ),
            ));
        }
        self.restorable_here(&plan.dir)?;
        let pids = restore::image_pids(&plan.dir)?;
        let taken = restore::taken_pids(&pids);
        let new_pidns = match plan.params.choice("crs_criu_pidns") {
            "always" => true,
            "never" => false,
            _ => !taken.is_empty(),
        };
        let as_owner = plan.owner.needs_switch().then_some(&plan.owner);
        let open_files = match files::read_checked(&plan.dir) {
            Ok(open_files) => open_files,
            Err(why) => return Ok(RestartOutcome::Rejected(why)),
        };
        let (inherit, _copies, inherit_stdin) =
            stdio_handover(&plan.dir, &open_files, !new_pidns, as_owner.map(|owner| owner.uid))?;
        // A file handed over is the process's new output: nothing to check or cut there.
        let handed_over = |file: &&files::OpenFile| {
            inherit.iter().any(|(key, _)| file.path.strip_prefix('/') == Some(key.as_str()))
        };
        let open_files: Vec<files::OpenFile> =
            open_files.iter().filter(|file| !handed_over(file)).cloned().collect();
        files::prepare(
            &plan.dir,
            &open_files,
            &plan.owner,
            plan.params.bool("crs_criu_truncate_grown"),
        )?;
        let log_file = crate::snapshot::restore_log_name(std::process::id());
        let options = restore::RestoreOptions {
            images_dir: &plan.dir,
            log_file: &log_file,
            log_level: plan.params.int("crs_criu_log_level") as i32,
            shell_job: plan.params.bool("crs_criu_shell_job"),
            ext_unix_sk: plan.params.bool("crs_criu_ext_unix_sk"),
            tcp_established: plan.params.bool("crs_criu_tcp_established"),
            file_locks: plan.params.bool("crs_criu_file_locks"),
            inherit_fds: &inherit,
            inherit_stdin,
            new_pidns,
            before_resume: None,
            timeout: match plan.params.int("crs_criu_restore_timeout") {
                0 => None,
                seconds => Some(std::time::Duration::from_secs(seconds.unsigned_abs())),
            },
            as_owner,
        };
        // The snapshot's fault: damage its check found, or a restore that stalled on it.
        let damage = std::cell::RefCell::new(None);
        let owner_refused = std::cell::Cell::new(false);
        let restored = std::thread::scope(|scope| {
            // The check reads the images while CRIU does: both are served by one read
            // from disk, and CRIU holds the restored tree until the verdict.
            let check = std::cell::RefCell::new(
                plan.unchecked.then(|| scope.spawn(|| crate::snapshot::verify(&plan.dir))),
            );
            let await_check = || {
                let Some(thread) = check.borrow_mut().take() else { return };
                *damage.borrow_mut() = match thread.join() {
                    Ok(verdict) if verdict.is_usable() => None,
                    Ok(verdict) => Some(verdict.to_string()),
                    Err(_) => Some("the snapshot check failed unexpectedly".to_string()),
                };
            };
            // Another user's restored tree is checked before it runs, too.
            let before_resume = |tree: &restore::Restored| -> Result<()> {
                await_check();
                if let Some(why) = damage.borrow().clone() {
                    return Err(Error::msg(why));
                }
                if let Some(owner) = as_owner {
                    tree.runs_as(owner.uid, owner.gid).map_err(|why| {
                        owner_refused.set(true);
                        Error::new(
                            crate::codes::OPAL_ERR_PERM,
                            format!("refusing snapshot {}: {why}", plan.dir.display()),
                        )
                    })?;
                }
                Ok(())
            };
            let held = plan.unchecked || as_owner.is_some();
            let options = restore::RestoreOptions {
                before_resume: held.then_some(&before_resume as &restore::BeforeResume),
                ..options
            };
            let restored = restore::restore(&bin, &options);
            await_check();
            restored
        });
        let rejection = damage.into_inner().or_else(|| match &restored {
            Err(e) if e.code() == crate::codes::OPAL_ERR_TIMEOUT => Some(e.message().to_string()),
            _ => None,
        });
        if let Some(why) = rejection {
            return Ok(RestartOutcome::Rejected(why));
        }
        let restored = restored.map_err(|e| {
            if owner_refused.get() {
                e
            } else {
                e.context(format!("restoring {}", plan.dir.display()))
            }
        })?;
        let _ = std::fs::remove_file(plan.dir.join(&log_file));
        let note = restored.new_pidns.then(|| {
            let why = if taken.is_empty() {
                "crs_criu_pidns=always".to_string()
            } else {
                let holders: Vec<&str> = taken.iter().map(|(_, holder)| holder.as_str()).collect();
                holders.join("; ")
            };
            format!(
                "restored into a new PID namespace ({why}): PID {} outside, {} inside",
                restored.pid, restored.pid_in_ns
            )
        });
        if spawn_child {
            return Ok(RestartOutcome::Spawned { pid: restored.pid, note });
        }
        if let Some(note) = note {
            eprintln!("opal-restart: {note}");
        }
        Ok(RestartOutcome::Exited(restored.wait()?))
    }
}

/// Asks the kernel to read every image file of `dir` into the page cache now, in the
/// background: CRIU and the check read them later, and on a cold cache the disk is
/// then already busy with them while the restore is prepared (a restore of a GiB-sized
/// image spends tens of milliseconds before CRIU reads anything). Only regular files,
/// never through a link; what cannot be opened is left to CRIU and the check.
fn start_reading_images(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a FIFO put there meanwhile does not block the open.
        let opened = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(entry.path());
        let Ok(file) = opened else { continue };
        if file.metadata().is_ok_and(|meta| meta.is_file()) {
            use std::os::fd::AsRawFd;
            // SAFETY: advice on a descriptor we hold; the whole file.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        }
    }
}

/// How the dump of `pid`'s tree locks the network: as `crs_criu_network_lock` says, where
/// `auto` leaves CRIU's default when there is no connection to lock. A connection with
/// `crs_criu_tcp_established=0` is refused here, by name (CRIU's own error names none).
fn network_lock(params: &Params, pid: i32) -> Result<Option<rpc::LockMethod>> {
    use proto::NetworkLock;
    let choice = params.choice("crs_criu_network_lock");
    let tcp_established = params.bool("crs_criu_tcp_established");
    if choice != "auto" && tcp_established {
        // Nothing to look for: the connections, if any, are dumped as asked.
        return Ok(Some(rpc::LockMethod::Fixed(match choice {
            "nftables" => NetworkLock::Nftables,
            "iptables" => NetworkLock::Iptables,
            _ => NetworkLock::Skip,
        })));
    }
    let connections = crate::tcp::connections(pid);
    if connections.is_empty() {
        return Ok(None);
    }
    if !tcp_established {
        let named: Vec<String> = connections.iter().map(|c| c.to_string()).collect();
        return Err(Error::new(
            crate::codes::OPAL_ERR_NOT_SUPPORTED,
            format!(
                "criu dump of process {pid}: it has TCP connections ({}) and crs_criu_tcp_established=0; \
                 set crs_criu_tcp_established=1 to checkpoint them",
                named.join(", ")
            ),
        ));
    }
    Ok(Some(rpc::LockMethod::Auto))
}

/// CRIU refuses a process whose session leader is outside its PID namespace (its
/// session ID reads 0 there, as under `unshare --pid --fork` started from a shell), so
/// such a process could never be checkpointed. Starting a session of its own fixes that
/// at the price of leaving the outer terminal's job control, hence the parameter.
fn leave_foreign_session() {
    // SAFETY: getsid and setsid have no preconditions.
    if unsafe { libc::getsid(0) } != 0 {
        return;
    }
    if unsafe { libc::setsid() } < 0 {
        // EPERM: the process leads its process group. The dump then fails with the
        // reason; nothing is lost by trying.
        log::warn!(
            target: "crs",
            "crs:criu: the session leader is outside this PID namespace and setsid failed ({}); \
             CRIU will refuse to dump this process",
            std::io::Error::last_os_error()
        );
    } else {
        log::debug!(target: "crs", "crs:criu: started a session of its own (the old leader was outside this PID namespace)");
    }
}

/// Refuses a restore whose executable or libraries changed since the checkpoint, with
/// a message that says which, before CRIU fails on it less clearly.
fn check_identity(dir: &Path) -> Result<()> {
    let Ok(manifest) = crate::snapshot::Manifest::read(dir) else { return Ok(()) };
    match manifest.identity_change() {
        None => Ok(()),
        Some(change) => Err(Error::new(
            crate::codes::OPAL_ERR_NOT_AVAILABLE,
            format!("cannot restore {}: {change}", dir.display()),
        )),
    }
}

/// CRIU `inherit_fd` keys with our descriptors, the copies made for them, and which
/// copy is our stdin.
type Handover = (Vec<(String, RawFd)>, Vec<std::fs::File>, Option<RawFd>);

/// What to hand the restored process for fds 0–2: copies of our own stdio where the
/// checkpointed process had pipes or sockets (those ends are gone with the original).
/// The copies lie above 2: CRIU closes an inherited descriptor once it has stored it,
/// and a shell-job restore then fails on its own stdin. Regular files CRIU reopens
/// itself at their recorded offsets (see [`files`]), and terminals too, except one
/// case: a file there that shrank or was replaced since the checkpoint and that we
/// have at the same fd ourselves is a job's output that its scheduler truncated or
/// made anew for this run (Slurm's default `--open-mode=truncate`): the process writes
/// on into it, as into a new pipe. Root restoring another user's snapshot (`owner`)
/// hands over only a file of that user. Not into a fresh PID namespace: a file opened
/// out here has no mount there that CRIU could name at the next dump. The returned
/// files must stay open until the restore is done.
fn stdio_handover(
    dir: &Path,
    open_files: &[files::OpenFile],
    reopen_files: bool,
    owner: Option<u32>,
) -> Result<Handover> {
    use std::os::unix::fs::MetadataExt;
    let Ok(text) = std::fs::read_to_string(dir.join(STDIO_FILE)) else {
        return Ok((Vec::new(), Vec::new(), None));
    };
    let (mut inherit, mut copies, mut stdin) = (Vec::new(), Vec::new(), None);
    for (fd, target) in text.lines().enumerate() {
        // SAFETY: fds 0-2 of this process stay open while it runs.
        let ours = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd as RawFd) };
        let key = if target.starts_with("pipe:[") || target.starts_with("socket:[") {
            target.to_string()
        } else {
            let (Some(relative), true) = (target.strip_prefix('/'), reopen_files) else {
                continue;
            };
            let (Ok(now), Ok(held)) = (
                std::fs::symlink_metadata(target),
                std::fs::File::from(ours.try_clone_to_owned().map_err(|e| {
                    Error::io(format!("duplicating our fd {fd} for the restore"), e)
                })?)
                .metadata(),
            ) else {
                continue;
            };
            let recorded = open_files.iter().find(|file| file.path == target);
            let as_it_was = recorded.is_some_and(|file| {
                (file.dev, file.ino) == (now.dev(), now.ino()) && now.len() >= file.size
            });
            let is_ours = now.is_file() && (now.dev(), now.ino()) == (held.dev(), held.ino());
            if as_it_was || !is_ours || owner.is_some_and(|uid| now.uid() != uid) {
                continue;
            }
            // CRIU names regular files by their path without the leading slash.
            relative.to_string()
        };
        let copy = ours
            .try_clone_to_owned()
            .map_err(|e| Error::io(format!("duplicating our fd {fd} for the restore"), e))?;
        let copy_fd = std::os::fd::AsRawFd::as_raw_fd(&copy);
        if fd == 0 {
            stdin = Some(copy_fd);
        }
        inherit.push((key, copy_fd));
        copies.push(std::fs::File::from(copy));
    }
    Ok((inherit, copies, stdin))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    /// How many of the file's pages are in the page cache.
    fn resident_pages(file: &std::fs::File, len: usize) -> usize {
        // SAFETY: a read-only shared mapping of the file's `len` bytes, only given to
        // mincore and unmapped before return; `vec` has one byte per page.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut vec = vec![0u8; len.div_ceil(4096)];
            assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
            libc::munmap(map, len);
            vec.iter().filter(|&&page| page & 1 != 0).count()
        }
    }

    #[test]
    fn images_are_read_into_the_cache_before_the_restore_needs_them() {
        let dir = super::rpc::TempDir::new("opalcrs-read-ahead").unwrap();
        let len = 8 << 20;
        let path = dir.path().join("pages-1.img");
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: advice on our own descriptor: drop its clean pages from the cache.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if resident_pages(&file, len) > len / 4096 / 2 {
            eprintln!("skipped: this file system keeps the file in memory");
            return;
        }
        // Neither a FIFO nor a link in the directory holds the reading up.
        let fifo =
            std::ffi::CString::new(dir.path().join("fifo").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("link")).unwrap();
        super::start_reading_images(dir.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while resident_pages(&file, len) < len / 4096 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(resident_pages(&file, len), len / 4096);
    }

    /// Device and inode of what `fd` refers to.
    fn same_file_id(fd: i32) -> (u64, u64) {
        // SAFETY: fstat into a zeroed struct.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut stat) }, 0, "fd {fd}");
        (stat.st_dev, stat.st_ino)
    }

    fn params(settings: &[(&str, &str)]) -> crate::params::Params {
        let mut params = crate::params::Params::defaults();
        for (name, value) in settings {
            params.set(name, value, crate::params::Source::CommandLine).unwrap();
        }
        params
    }

    #[test]
    fn a_chosen_network_lock_is_passed_as_chosen() {
        use super::proto::NetworkLock;
        use super::rpc::LockMethod;
        let own = std::process::id() as i32;
        for (choice, method) in [
            ("nftables", NetworkLock::Nftables),
            ("iptables", NetworkLock::Iptables),
            ("skip", NetworkLock::Skip),
        ] {
            let chosen = super::network_lock(&params(&[("crs_criu_network_lock", choice)]), own);
            assert_eq!(chosen.unwrap(), Some(LockMethod::Fixed(method)), "{choice}");
        }
    }

    #[test]
    fn without_tcp_established_a_connection_is_refused_by_name_and_none_is_fine() {
        let refusing = params(&[("crs_criu_tcp_established", "0")]);
        let mut idle = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let verdict = super::network_lock(&refusing, idle.id() as i32);
        let _ = idle.kill();
        let _ = idle.wait();
        assert_eq!(verdict.unwrap(), None, "a process without connections");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let err = super::network_lock(&refusing, std::process::id() as i32).unwrap_err();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert!(err.message().contains(&format!("{local} -> {remote}")), "{err}");
        assert!(err.message().contains("set crs_criu_tcp_established=1"), "{err}");
    }

    #[test]
    fn pipes_and_sockets_are_handed_over_and_regular_files_left_to_criu() {
        let dir = std::env::temp_dir().join(format!("opalcrs-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(super::STDIO_FILE), "/dev/null\npipe:[42]\nsocket:[7]\n").unwrap();
        let (handover, copies, stdin) = super::stdio_handover(&dir, &[], true, None).unwrap();
        assert_eq!(stdin, None, "stdin was /dev/null");
        let keys: Vec<&str> = handover.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["pipe:[42]", "socket:[7]"]);
        // Copies of our fds 1 and 2, above 2 (CRIU closes what it inherits).
        for ((_, fd), ours) in handover.iter().zip([1, 2]) {
            assert!(*fd > 2, "{handover:?}");
            let (copy, original) = (same_file_id(*fd), same_file_id(ours));
            assert_eq!(copy, original, "fd {fd} is not a copy of fd {ours}");
        }
        assert_eq!(copies.len(), 2);
        drop(copies);
        std::fs::write(dir.join(super::STDIO_FILE), format!("{}\n/dev/pts/3\n", dir.display()))
            .unwrap();
        assert!(super::stdio_handover(&dir, &[], true, None).unwrap().0.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

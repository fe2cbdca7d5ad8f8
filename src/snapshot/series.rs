//! A series of numbered snapshots, `<base>/<name>/<seq>/`, and their atomic publication.
//!
//! A snapshot is written under a temporary name `.tmp-<seq>-<writer pid>-<writer start
//! time>-<random hex>` and renamed to `<seq>` only when complete, so a directory with a
//! numeric name is always a whole snapshot. Names are allocated and changed under `flock`
//! on `<series>/.lock`, held only for those few renames and never while a component
//! works, so a writer that dies leaves nothing that blocks the next one; its temporary is
//! removed by the next writer that finds it gone.
//!
//! Nothing another user controls is trusted, root included: every directory on the way
//! to a series must belong to root or to the writer and be writable by no one else
//! (unless sticky, as /tmp), and the series itself to the writer. What the store does in
//! a series (listing, creating, writing the manifest, publishing, pruning, removing)
//! goes through directory descriptors opened without following symbolic links, so a
//! temporary swapped for a link while a component writes is found out and nothing is
//! written or removed through it. No descriptor is kept open between [`Series::begin`]
//! and [`PendingSnapshot::publish`]: a CRIU dump taken in between would record it, and the
//! restore would look for the temporary's name, which no longer exists.

use super::manifest::{
    hash_open_file, verify, FileEntry, IdentityEntry, Manifest, Verdict, MANIFEST_FILE,
};
use super::prehashed::{self, Prehashed, PREHASHED_FILE};
use crate::codes;
use crate::error::{Error, Result};
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The series lock file.
pub const LOCK_FILE: &str = ".lock";
/// Prefix of snapshots being written, or being deleted by pruning.
const TEMP_PREFIX: &str = ".tmp-";
/// Symbolic links followed on the way to a series, as the kernel's own limit.
const MAX_LINKS: u32 = 40;

/// Snapshots passed over when looking for a usable one: `(seq, reason)`, newest first.
pub type Skipped = Vec<(u64, String)>;

/// A directory of numbered snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    path: PathBuf,
}

/// Checks a series name as given by `crs_base_snapshot_name` or `opal-checkpoint -n`:
/// one path component, not `.` or `..`, no `..` anywhere, no NUL, at most NAME_MAX bytes.
pub fn check_series_name(name: &str) -> Result<()> {
    const NAME_MAX: usize = 255;
    if name.len() > NAME_MAX {
        let start: String = name.chars().take(32).collect();
        return Err(Error::new(
            codes::OPAL_ERR_BAD_PARAM,
            format!(
                "invalid snapshot name \"{start}…\" ({} bytes): it is longer than {NAME_MAX} bytes (NAME_MAX)",
                name.len()
            ),
        ));
    }
    let why = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains("..") {
        "it contains '..'"
    } else if name == "." {
        "it is '.'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::new(codes::OPAL_ERR_BAD_PARAM, format!("invalid snapshot name {name:?}: {why}")))
}

impl Series {
    /// Opens the series `<base>/<name>`, creating it and any missing directory on the way
    /// with mode 0700. A relative `base` is taken from the working directory; the path
    /// kept (and recorded in snapshots) is the real one, without links. Refuses a bad
    /// name, a directory on the way that another user owns or may write (see
    /// [`check_ancestor`]) or a link in it that another user owns, and a series that is
    /// a symbolic link, not a directory, world-writable, or owned by another user (root
    /// too is refused another user's series).
    pub fn open(base: &Path, name: &str) -> Result<Series> {
        check_series_name(name)?;
        let shown = base.join(name);
        let (parent, real_base) = walk(base, true, &shown)?;
        let path = real_base.join(name);
        match parent.dir.mkdir(OsStr::new(name), 0o700) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::io(
                    format!("cannot create series directory {}", path.display()),
                    e,
                ))
            }
        }
        open_series_dir(&parent.dir, OsStr::new(name), &path)?;
        Ok(Series { path })
    }

    /// An existing series directory, used as it is.
    pub fn at(path: &Path) -> Series {
        Series { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where snapshot `seq` is once published.
    pub fn snapshot_dir(&self, seq: u64) -> PathBuf {
        self.path.join(seq.to_string())
    }

    /// The published snapshots, ascending: directories whose name is a sequence number
    /// written canonically (`7`, not `07`).
    pub fn snapshots(&self) -> Result<Vec<u64>> {
        let listed = Dir::open(&self.path).and_then(|dir| {
            let mut seqs = Vec::new();
            for seq in numbered_in(&dir)? {
                if is_kind(&dir.stat_at(OsStr::new(&seq.to_string()))?, libc::S_IFDIR) {
                    seqs.push(seq);
                }
            }
            Ok(seqs)
        });
        listed.map_err(|e| Error::io(format!("cannot list series {}", self.path.display()), e))
    }

    /// The newest snapshot that a restart may use (see [`Verdict::is_usable`]), with every
    /// newer one that was skipped and why.
    pub fn newest_good(&self) -> Result<Option<(u64, Skipped)>> {
        let scan = self.scan_newest_good(&[])?;
        Ok(scan.found.map(|(seq, _)| (seq, scan.skipped)))
    }

    /// Verifies snapshots from the newest down until one is usable; those in `excluded`
    /// are skipped for the reason given there.
    pub(crate) fn scan_newest_good(&self, excluded: &[(u64, String)]) -> Result<NewestGood> {
        let mut skipped = Vec::new();
        for seq in self.snapshots()?.into_iter().rev() {
            if let Some((_, why)) = excluded.iter().find(|(number, _)| *number == seq) {
                skipped.push((seq, why.clone()));
                continue;
            }
            let verdict = verify(&self.snapshot_dir(seq));
            if verdict.is_usable() {
                return Ok(NewestGood { found: Some((seq, verdict)), skipped });
            }
            skipped.push((seq, verdict.to_string()));
        }
        Ok(NewestGood { found: None, skipped })
    }

    /// The series directory as a writer uses it: reached by [`walk`] (every directory on
    /// the way checked) and checked itself, whatever path this `Series` was made with.
    fn open_dir(&self) -> Result<Dir> {
        let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Err(Error::new(
                codes::OPAL_ERR_BAD_PARAM,
                format!("refusing series {}: not a directory path", self.path.display()),
            ));
        };
        let (parent, _) = walk(parent, false, &self.path)?;
        open_series_dir(&parent.dir, name, &self.path)
    }

    /// Starts a new snapshot written by process `writer_pid`: allocates the next sequence
    /// number (one past every published snapshot and every temporary of a live writer)
    /// and creates its temporary directory (mode 0700). Temporaries of writers that no
    /// longer exist are removed.
    pub fn begin(&self, writer_pid: i32) -> Result<PendingSnapshot> {
        let series = self.open_dir()?;
        let listing_failed =
            |e| Error::io(format!("cannot list series {}", self.path.display()), e);
        let (seq, name, temp_id, stale) = {
            let _lock = SeriesLock::acquire(&series, &self.path)?;
            let mut newest = None;
            let mut stale = Vec::new();
            for entry in series.entries().map_err(listing_failed)? {
                let Some(name) = entry.to_str() else { continue };
                if let Some(seq) = parse_seq(name) {
                    newest = newest.max(Some(seq));
                    continue;
                }
                let Some(temp) = TempName::parse(name) else { continue };
                if temp.writer_alive() {
                    newest = newest.max(Some(temp.seq));
                } else {
                    stale.push(entry);
                }
            }
            let seq = match newest {
                None => 0,
                Some(newest) => newest.checked_add(1).ok_or_else(|| {
                    Error::new(
                        codes::OPAL_ERR_VALUE_OUT_OF_BOUNDS,
                        format!("series {} has no sequence number left", self.path.display()),
                    )
                })?,
            };
            let name = temp_name(seq, writer_pid);
            let created = self.path.join(&name);
            let create_failed =
                |e| Error::io(format!("cannot create snapshot directory {}", created.display()), e);
            series.mkdir(OsStr::new(&name), 0o700).map_err(create_failed)?;
            let temp_id = match series.subdir(OsStr::new(&name)).and_then(|temp| temp.identity()) {
                Ok(temp_id) => temp_id,
                Err(e) => {
                    // Swapped at once: what has the name is not ours to write into, and
                    // would count as a live writer's temporary for as long as we run.
                    remove_tree(&series, OsStr::new(&name), &created);
                    return Err(create_failed(e));
                }
            };
            (seq, name, temp_id, stale)
        };
        // Deleting can take long (GiB of images), so it happens after the lock is released;
        // another writer removing the same stale temporary at once is harmless.
        for entry in stale {
            let path = self.path.join(&entry);
            log::info!(target: "crs", "crs: removing {} left by a writer that is gone", path.display());
            remove_tree(&series, &entry, &path);
        }
        Ok(PendingSnapshot {
            seq,
            dir: self.path.join(&name),
            name,
            series: self.clone(),
            series_id: series.identity().map_err(listing_failed)?,
            temp_id,
            active: true,
        })
    }

    /// Under the lock: renames the oldest published snapshots beyond the newest `keep`
    /// (0 keeps all; `published`, the one just written, is never one of them) to
    /// temporaries of this process, so that none is ever seen half-deleted, and returns
    /// their names for deletion. Failures are logged: they leave an extra snapshot, never
    /// a broken one.
    fn retire_beyond(&self, series: &Dir, keep: u64, published: u64) -> Vec<String> {
        if keep == 0 {
            return Vec::new();
        }
        let seqs = match numbered_in(series) {
            Ok(seqs) => seqs,
            Err(e) => {
                log::warn!(target: "crs", "crs: not pruning {}: {e}", self.path.display());
                return Vec::new();
            }
        };
        let excess = seqs.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
        let mut retired = Vec::new();
        for seq in seqs.into_iter().take(excess).filter(|&seq| seq != published) {
            let to = temp_name(seq, std::process::id() as i32);
            match series.rename_noreplace(OsStr::new(&seq.to_string()), OsStr::new(&to)) {
                Ok(()) => retired.push(to),
                Err(e) => {
                    log::warn!(target: "crs", "crs: cannot prune {}: {e}", self.snapshot_dir(seq).display())
                }
            }
        }
        retired
    }
}

/// Result of [`Series::scan_newest_good`].
pub(crate) struct NewestGood {
    /// The newest usable snapshot and its verdict.
    pub found: Option<(u64, Verdict)>,
    /// Every newer snapshot.
    pub skipped: Skipped,
}

/// What [`PendingSnapshot::publish`] needs besides the files.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Flush every file and directory before the rename, and the series after it.
    pub fsync: bool,
    /// Keep only the newest `keep` snapshots after publishing; 0 keeps all.
    pub keep: u64,
    pub component: String,
    pub pid: i32,
    pub host: String,
    /// Executable and libraries for the manifest's `identity` list.
    pub identity: Vec<IdentityEntry>,
}

/// A published snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub path: PathBuf,
}

/// A snapshot being written into its temporary directory. Dropping it without
/// [`publish`](PendingSnapshot::publish) removes the directory.
#[derive(Debug)]
pub struct PendingSnapshot {
    pub seq: u64,
    /// The temporary directory, for components that write by path. The store itself
    /// reaches it only through the series directory and checks that it is still the
    /// directory [`Series::begin`] made.
    pub dir: PathBuf,
    /// Its name in the series.
    name: String,
    series: Series,
    series_id: Identity,
    temp_id: Identity,
    /// Whether `dir` is still ours to remove.
    active: bool,
}

impl PendingSnapshot {
    /// Writes `contents` to the file `name` of the snapshot (replacing it), through the
    /// checked directory and never through a link.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        let (_, temp) = self.reopen()?;
        let path = self.dir.join(name);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        temp.open_file(OsStr::new(name), flags, 0o600)
            .and_then(|mut file| file.write_all(contents))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// Writes the manifest of everything in the directory, flushes it if asked, renames
    /// it to `<series>/<seq>` (failing if that exists) and prunes to `options.keep`.
    /// On failure the temporary directory is removed, and nothing is published when it
    /// is no longer the directory [`Series::begin`] made.
    pub fn publish(mut self, options: PublishOptions) -> Result<Published> {
        let started = std::time::Instant::now();
        let (series, temp) = self.reopen()?;
        let mut payload = Payload::scan(&temp, &self.dir)?;
        let prehashed = self.take_prehashed(&temp, &mut payload)?;
        // Flushing the payload (disk-bound) and hashing it (reads from the page cache)
        // overlap: for a GiB-sized CRIU image the checksums then cost almost nothing.
        let (files, flushed) = std::thread::scope(|scope| {
            let flusher = options.fsync.then(|| scope.spawn(|| flush_files(&payload, &self.dir)));
            let files = payload
                .files
                .iter()
                .map(|(relative, file)| {
                    let known = prehashed.iter().find(|record| record.name == *relative);
                    match known.filter(|record| file.metadata().is_ok_and(|m| record.matches(&m))) {
                        Some(record) => {
                            Ok(FileEntry::new(relative.clone(), record.size, record.hash.clone()))
                        }
                        None => hash_open_file(file, &self.dir.join(relative))
                            .map(|(size, hash)| FileEntry::new(relative.clone(), size, hash)),
                    }
                })
                .collect::<Result<Vec<_>>>();
            let hashed_at = started.elapsed();
            let flushed = flusher.map_or(Ok(()), |thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(Error::msg("the snapshot flush thread panicked")))
            });
            log::debug!(target: "crs", "crs: publish phases: hashed {:.2} ms, flushed {:.2} ms",
                hashed_at.as_secs_f64() * 1000.0, started.elapsed().as_secs_f64() * 1000.0);
            (files, flushed)
        });
        let files = files?;
        flushed?;
        let dirs = payload.dirs.iter().map(|(_, relative)| relative.clone()).collect();
        let manifest = Manifest::new(
            &options.component,
            options.pid,
            &options.host,
            files,
            dirs,
            options.identity,
        )
        .to_json()?;
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        temp.open_file(OsStr::new(MANIFEST_FILE), flags, 0o600)
            .and_then(|mut file| {
                file.write_all(manifest.as_bytes())?;
                if options.fsync {
                    file.sync_all()?;
                }
                Ok(())
            })
            .map_err(|e| Error::io(format!("cannot write {}", manifest_path.display()), e))?;
        if options.fsync {
            // Deepest first, the snapshot directory itself last.
            for (dir, relative) in payload.dirs.iter().rev() {
                dir.sync().map_err(|e| {
                    Error::io(format!("cannot flush {}", self.dir.join(relative).display()), e)
                })?;
            }
            temp.sync()
                .map_err(|e| Error::io(format!("cannot flush {}", self.dir.display()), e))?;
        }

        let path = self.series.snapshot_dir(self.seq);
        let seq_name = self.seq.to_string();
        let retired = {
            let _lock = SeriesLock::acquire(&series, self.series.path())?;
            self.check_unchanged(&series)?;
            match series.rename_noreplace(OsStr::new(&self.name), OsStr::new(&seq_name)) {
                Ok(()) => {}
                // Moved away between the check and the rename.
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.replaced()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(Error::new(
                        codes::OPAL_EXISTS,
                        format!("cannot publish snapshot {}: it already exists", path.display()),
                    ))
                }
                Err(e) => {
                    return Err(Error::io(format!("cannot publish snapshot {}", path.display()), e))
                }
            }
            // Swapped between the check and the rename: what now has the number is not
            // ours, so it goes (a link is unlinked, not followed).
            if series.stat_at(OsStr::new(&seq_name)).ok().map(|st| Identity::of(&st))
                != Some(self.temp_id)
            {
                remove_tree(&series, OsStr::new(&seq_name), &path);
                return Err(self.replaced());
            }
            self.active = false;
            if options.fsync {
                series.sync().map_err(|e| {
                    Error::io(
                        format!("snapshot {} is published but not flushed", path.display()),
                        e,
                    )
                })?;
            }
            self.series.retire_beyond(&series, options.keep, self.seq)
        };
        log::debug!(target: "crs", "crs: publish phases: published {:.2} ms", started.elapsed().as_secs_f64() * 1000.0);
        for name in retired {
            let dir = self.series.path().join(&name);
            log::debug!(target: "crs", "crs: pruning {}", dir.display());
            remove_tree(&series, OsStr::new(&name), &dir);
        }
        Ok(Published { seq: self.seq, path })
    }

    /// Takes the records of files hashed while they were written
    /// ([`prehashed`](super::prehashed)) out of the payload and the directory: they are
    /// never published. A records file that is incomplete gives none.
    fn take_prehashed(&self, temp: &Dir, payload: &mut Payload) -> Result<Vec<Prehashed>> {
        let Some(mut file) = payload.prehashed.take() else { return Ok(Vec::new()) };
        let mut text = String::new();
        let read = file.read_to_string(&mut text);
        temp.unlink(OsStr::new(PREHASHED_FILE), false).map_err(|e| {
            Error::io(format!("cannot remove {}", self.dir.join(PREHASHED_FILE).display()), e)
        })?;
        let records = read.ok().and_then(|_| prehashed::parse(&text)).unwrap_or_default();
        log::debug!(target: "crs", "crs: publish: {} files hashed while they were written", records.len());
        Ok(records)
    }

    /// Gives the snapshot up and removes its temporary directory.
    pub fn abandon(mut self) {
        self.discard();
    }

    /// The series and the temporary, opened again and checked to be the directories
    /// [`Series::begin`] used.
    fn reopen(&self) -> Result<(Dir, Dir)> {
        let series = self.series.open_dir()?;
        if series.identity().ok() != Some(self.series_id) {
            return Err(Error::msg(format!(
                "snapshot {} not published: the series {} was replaced while it was written",
                self.seq,
                self.series.path().display()
            )));
        }
        self.check_unchanged(&series)?;
        let temp = series.subdir(OsStr::new(&self.name)).map_err(|_| self.replaced())?;
        if temp.identity().ok() != Some(self.temp_id) {
            return Err(self.replaced());
        }
        Ok((series, temp))
    }

    /// Whether the temporary's name still is the directory [`Series::begin`] made.
    fn check_unchanged(&self, series: &Dir) -> Result<()> {
        match series.stat_at(OsStr::new(&self.name)) {
            Ok(st) if Identity::of(&st) == self.temp_id => Ok(()),
            _ => Err(self.replaced()),
        }
    }

    fn replaced(&self) -> Error {
        Error::new(
            codes::OPAL_ERR_PERM,
            format!(
                "snapshot {} not published: its temporary directory {} was replaced (by a link or another directory) while it was written",
                self.seq,
                self.dir.display()
            ),
        )
    }

    fn discard(&mut self) {
        if !std::mem::take(&mut self.active) {
            return;
        }
        let series = match self.series.open_dir() {
            Ok(series) if series.identity().ok() == Some(self.series_id) => series,
            _ => {
                log::warn!(target: "crs", "crs: not removing {}: its series is no longer the one it was written in", self.dir.display());
                return;
            }
        };
        let name = OsStr::new(&self.name);
        match series.stat_at(name) {
            Ok(st) if Identity::of(&st) == self.temp_id || is_kind(&st, libc::S_IFLNK) => {
                remove_tree(&series, name, &self.dir)
            }
            Ok(_) => {
                log::warn!(target: "crs", "crs: not removing {}: it is no longer the directory this checkpoint made", self.dir.display())
            }
            Err(_) => {}
        }
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        self.discard();
    }
}

/// An exclusive `flock` on the series lock file, released when dropped (closing the
/// descriptor releases it, also when the process dies).
struct SeriesLock {
    _file: File,
}

impl SeriesLock {
    fn acquire(series: &Dir, series_path: &Path) -> Result<SeriesLock> {
        let path = series_path.join(LOCK_FILE);
        let failed = |e| Error::io(format!("cannot lock {}", path.display()), e);
        let file = series
            .open_file(OsStr::new(LOCK_FILE), libc::O_RDWR | libc::O_CREAT, 0o600)
            .map_err(failed)?;
        loop {
            // SAFETY: the descriptor is open and owned by `file` for the whole call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(SeriesLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(failed(err));
            }
        }
    }
}

/// The parts of a temporary's name: `.tmp-<seq>-<writer pid>-<start time>-<random hex>`,
/// or `.tmp-<seq>-<writer pid>-<random hex>` as written before start times were.
struct TempName {
    seq: u64,
    writer_pid: i32,
    /// The writer's start time (see [`start_time`]); None in an old name.
    writer_start: Option<u64>,
}

impl TempName {
    fn parse(name: &str) -> Option<TempName> {
        let parts: Vec<&str> = name.strip_prefix(TEMP_PREFIX)?.split('-').collect();
        let (seq, pid, start, random) = match parts[..] {
            [seq, pid, random] => (seq, pid, None, random),
            [seq, pid, start, random] => (seq, pid, Some(start), random),
            _ => return None,
        };
        let seq = parse_seq(seq)?;
        // PID 0 and negative PIDs would make kill() address process groups.
        let writer_pid = pid.parse().ok().filter(|&pid: &i32| pid > 0)?;
        let writer_start = match start {
            Some(start) => Some(parse_seq(start)?),
            None => None,
        };
        (!random.is_empty() && random.bytes().all(|b| b.is_ascii_hexdigit())).then_some(TempName {
            seq,
            writer_pid,
            writer_start,
        })
    }

    /// Whether the process that made the temporary is still running. Its PID alone does
    /// not tell: CRIU restores a process with the PID it was dumped with, so a restored
    /// copy would take the temporaries its original left for its own. A lock would not
    /// tell either: CRIU restores file locks and open descriptors too. The start time
    /// does: the kernel sets it when the task is created and CRIU cannot set it, so a
    /// restored process (or any later one with the PID) has another one.
    fn writer_alive(&self) -> bool {
        match (self.writer_start, start_time(self.writer_pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            // An old name, or a process whose /proc entry we cannot read (another PID
            // namespace, hidepid): only whether the PID exists can be asked.
            _ => process_exists(self.writer_pid),
        }
    }
}

fn temp_name(seq: u64, writer_pid: i32) -> String {
    let random = random_u64();
    match start_time(writer_pid) {
        Some(start) => format!("{TEMP_PREFIX}{seq}-{writer_pid}-{start}-{random:016x}"),
        None => format!("{TEMP_PREFIX}{seq}-{writer_pid}-{random:016x}"),
    }
}

/// Field 22 of /proc/<pid>/stat (this process's own through /proc/self, which holds
/// also in another PID namespace): when the process started, in clock ticks after boot.
/// Read afresh every time: a value kept in memory would come back with a CRIU image.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let own = i64::from(pid) == i64::from(std::process::id());
    let path = if own { "/proc/self/stat".to_string() } else { format!("/proc/{pid}/stat") };
    let stat = std::fs::read_to_string(path).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Distinct per call (the hasher keys come from the OS and advance per instance; the
/// clock separates a restored copy of a process from its original). Uniqueness is all
/// that is needed: the sequence number already tells writers apart.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A sequence number written canonically: decimal digits, no sign, no leading zero.
pub(crate) fn parse_seq(name: &str) -> Option<u64> {
    let seq: u64 = name.parse().ok()?;
    (seq.to_string() == name).then_some(seq)
}

/// Whether a process exists, as `kill(pid, 0)` tells (EPERM means it does). A writer
/// in a PID namespace that the caller cannot see looks gone, so writers of one series
/// should share a PID namespace or not overlap in time.
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence; pid > 0 addresses one process.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The numbers taken in an open series directory, ascending: every entry named by a
/// sequence number, a directory or not (a writer neither reuses nor keeps a number that
/// something else holds).
fn numbered_in(series: &Dir) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> =
        series.entries()?.iter().filter_map(|entry| entry.to_str().and_then(parse_seq)).collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// A directory reached so far by [`walk`], and its real path.
struct Walked {
    dir: Dir,
    path: PathBuf,
}

/// Opens the directory `path` (a relative one from the working directory) one component
/// at a time from `/`, without trusting anything another user controls: each directory
/// on the way must pass [`check_ancestor`], and a symbolic link is followed only when
/// root or this user owns it (it lies in a directory that passed). With `create`,
/// missing directories are made (mode 0700). `series` names what the walk is for, in
/// messages. Returns the directory and its real path.
fn walk(path: &Path, create: bool, series: &Path) -> Result<(Walked, PathBuf)> {
    let refuse = |why: String| {
        Error::new(codes::OPAL_ERR_PERM, format!("refusing series {}: {why}", series.display()))
    };
    let failed = |what: &Path, e| {
        Error::io(format!("cannot use series {}: {}", series.display(), what.display()), e)
    };
    let root = || -> Result<Walked> {
        let dir =
            Dir::open_flags(Path::new("/"), libc::O_PATH).map_err(|e| failed(Path::new("/"), e))?;
        let st = dir.stat().map_err(|e| failed(Path::new("/"), e))?;
        check_ancestor(&st, Path::new("/")).map_err(refuse)?;
        Ok(Walked { dir, path: PathBuf::from("/") })
    };
    let mut todo = if path.is_absolute() {
        components(path)
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("cannot read the working directory", e))?;
        components(&cwd.join(path))
    };
    let mut current = root()?;
    let mut above: Vec<Walked> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            // At / this stays at /, as the kernel does.
            if let Some(parent) = above.pop() {
                current = parent;
            }
            continue;
        }
        let here = current.path.join(&name);
        let st = match current.dir.stat_at(&name) {
            Ok(st) => st,
            Err(e) if e.kind() == ErrorKind::NotFound && create => {
                match current.dir.mkdir(&name, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("cannot create directory {}", here.display()),
                            e,
                        ))
                    }
                }
                todo.push_front(name);
                continue;
            }
            Err(e) => return Err(failed(&here, e)),
        };
        if is_kind(&st, libc::S_IFLNK) {
            if st.st_uid != 0 && st.st_uid != euid() {
                return Err(refuse(format!(
                    "{} is a symbolic link owned by uid {}, neither root nor this user",
                    here.display(),
                    st.st_uid
                )));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(refuse(format!(
                    "too many symbolic links on the way to {}",
                    here.display()
                )));
            }
            let target = current.dir.read_link(&name).map_err(|e| failed(&here, e))?;
            if target.is_absolute() {
                above.clear();
                current = root()?;
            }
            for part in components(&target).into_iter().rev() {
                todo.push_front(part);
            }
            continue;
        }
        if !is_kind(&st, libc::S_IFDIR) {
            return Err(refuse(format!("{} is not a directory", here.display())));
        }
        let dir = current
            .dir
            .open_at(&name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .map_err(|e| failed(&here, e))?;
        let opened = dir.stat().map_err(|e| failed(&here, e))?;
        if Identity::of(&opened) != Identity::of(&st) {
            return Err(refuse(format!("{} changed while it was checked", here.display())));
        }
        check_ancestor(&opened, &here).map_err(refuse)?;
        above.push(std::mem::replace(&mut current, Walked { dir, path: here }));
    }
    let real = current.path.clone();
    Ok((current, real))
}

/// The names in `path` to walk, in order (`..` kept, `.` and `/` dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|part| match part {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// A directory on the way to a series must be owned by root or this user, and writable
/// by no one else unless sticky (others then cannot rename or remove what we make, as
/// in /tmp). Group write is allowed for root's group and this process's own.
fn check_ancestor(st: &libc::stat, path: &Path) -> std::result::Result<(), String> {
    let me = euid();
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if st.st_uid != 0 && st.st_uid != me {
        Err(format!(
            "{} is owned by uid {}, neither root nor this user (uid {me})",
            path.display(),
            st.st_uid
        ))
    } else if !sticky && st.st_mode & 0o002 != 0 {
        Err(format!("{} is writable by everyone and not sticky", path.display()))
    } else if !sticky && st.st_mode & 0o020 != 0 && st.st_gid != 0 && st.st_gid != egid() {
        Err(format!("{} is writable by group {} and not sticky", path.display(), st.st_gid))
    } else {
        Ok(())
    }
}

/// Opens the series directory `name` in `parent` (already walked) and checks it: a
/// directory, not a link, not world-writable, owned by this user.
fn open_series_dir(parent: &Dir, name: &OsStr, path: &Path) -> Result<Dir> {
    let refuse = |why: String| {
        Error::new(codes::OPAL_ERR_PERM, format!("refusing series {}: {why}", path.display()))
    };
    let failed = |e| Error::io(format!("cannot use series {}", path.display()), e);
    let st = parent.stat_at(name).map_err(failed)?;
    if is_kind(&st, libc::S_IFLNK) {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !is_kind(&st, libc::S_IFDIR) {
        return Err(refuse("it is not a directory".into()));
    }
    let dir = parent.subdir(name).map_err(failed)?;
    let st = dir.stat().map_err(failed)?;
    let me = euid();
    if st.st_mode & 0o002 != 0 {
        Err(refuse("it is world-writable".into()))
    } else if st.st_uid != me {
        Err(refuse(format!("it is owned by uid {}, not by this user (uid {me})", st.st_uid)))
    } else {
        Ok(dir)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

fn egid() -> u32 {
    // SAFETY: getegid cannot fail and touches no memory of ours.
    unsafe { libc::getegid() }
}

fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Which file a stat describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: libc::dev_t,
    ino: libc::ino_t,
}

impl Identity {
    fn of(st: &libc::stat) -> Identity {
        Identity { dev: st.st_dev, ino: st.st_ino }
    }
}

/// An open directory; names given to its methods are single components, looked up
/// without following a final symbolic link.
struct Dir {
    file: File,
}

impl Dir {
    /// `path` as given (links followed): for readers, who do not write.
    fn open(path: &Path) -> io::Result<Dir> {
        Dir::open_flags(path, libc::O_RDONLY)
    }

    fn open_flags(path: &Path, flags: libc::c_int) -> io::Result<Dir> {
        let path = c_name(path.as_os_str())?;
        // SAFETY: a NUL-terminated path; the descriptor returned is owned by the File.
        let fd =
            cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Dir { file: unsafe { File::from_raw_fd(fd) } })
    }

    fn open_at(&self, name: &OsStr, flags: libc::c_int) -> io::Result<Dir> {
        Ok(Dir { file: self.open_file(name, flags | libc::O_DIRECTORY, 0)? })
    }

    /// A directory in this one, opened for listing.
    fn subdir(&self, name: &OsStr) -> io::Result<Dir> {
        self.open_at(name, libc::O_RDONLY)
    }

    /// `openat` of `name` with `flags` plus O_NOFOLLOW and O_CLOEXEC.
    fn open_file(&self, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let name = c_name(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a NUL-terminated name relative to our open descriptor; the mode is
        // passed as the variadic argument open takes with O_CREAT.
        let fd = cvt(unsafe {
            libc::openat(self.file.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode))
        })?;
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn stat(&self) -> io::Result<libc::stat> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills `st` when it succeeds.
        cvt(unsafe { libc::fstat(self.file.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: initialised by the successful fstat.
        Ok(unsafe { st.assume_init() })
    }

    /// `name` itself, a link not followed.
    fn stat_at(&self, name: &OsStr) -> io::Result<libc::stat> {
        let name = c_name(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a NUL-terminated name; fstatat fills `st` when it succeeds.
        cvt(unsafe {
            libc::fstatat(
                self.file.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        // SAFETY: initialised by the successful fstatat.
        Ok(unsafe { st.assume_init() })
    }

    fn identity(&self) -> io::Result<Identity> {
        self.stat().map(|st| Identity::of(&st))
    }

    fn mkdir(&self, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: a NUL-terminated name relative to our open descriptor.
        cvt(unsafe { libc::mkdirat(self.file.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
    }

    fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        let name = c_name(name)?;
        let mut buffer = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: readlinkat writes at most `buffer.len()` bytes into it.
        let len = unsafe {
            libc::readlinkat(
                self.file.as_raw_fd(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
        buffer.truncate(len);
        Ok(PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(buffer)))
    }

    /// The names in the directory, without `.` and `..`.
    fn entries(&self) -> io::Result<Vec<OsString>> {
        // SAFETY: duplicating our open descriptor; the copy is owned by the stream below.
        let fd = cvt(unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `fd` is open and ours; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: the stream did not take `fd`.
            unsafe { libc::close(fd) };
            return Err(err);
        }
        // The copy shares the file offset with ours, which an earlier listing moved.
        // SAFETY: `stream` is a valid directory stream until closedir below.
        unsafe { libc::rewinddir(stream) };
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: readdir reports the end and errors apart only through errno.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is valid; the entry stays valid until the next readdir.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let err = io::Error::last_os_error();
                break if err.raw_os_error() == Some(0) { Ok(()) } else { Err(err) };
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        };
        // SAFETY: closes the stream and its descriptor once.
        unsafe { libc::closedir(stream) };
        result.map(|()| names)
    }

    fn unlink(&self, name: &OsStr, directory: bool) -> io::Result<()> {
        let name = c_name(name)?;
        let flags = if directory { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: a NUL-terminated name relative to our open descriptor.
        cvt(unsafe { libc::unlinkat(self.file.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
    }

    /// Renames `from` to `to` in this directory, failing with AlreadyExists when `to`
    /// exists (rename(2) alone would replace an empty directory).
    fn rename_noreplace(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (from_c, to_c) = (c_name(from)?, c_name(to)?);
        let fd = self.file.as_raw_fd();
        // SAFETY: NUL-terminated names relative to our open descriptor.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                fd,
                from_c.as_ptr(),
                fd,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(err);
        }
        // A file system without RENAME_NOREPLACE: check, then rename (under the series
        // lock, against other writers).
        if self.stat_at(to).is_ok() {
            return Err(io::Error::from(ErrorKind::AlreadyExists));
        }
        // SAFETY: as above.
        cvt(unsafe { libc::renameat(fd, from_c.as_ptr(), fd, to_c.as_ptr()) }).map(drop)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "a name contains a NUL byte"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Removes `name` from `parent` and, if it is a directory, everything in it, through
/// descriptors: a symbolic link met anywhere is removed itself, never followed. Logs
/// rather than fails: what is left is a temporary that the next writer removes.
fn remove_tree(parent: &Dir, name: &OsStr, shown: &Path) {
    if let Err(e) = remove_tree_at(parent, name) {
        log::warn!(target: "crs", "crs: cannot remove {}: {e}", shown.display());
    }
}

fn remove_tree_at(parent: &Dir, name: &OsStr) -> io::Result<()> {
    let st = match parent.stat_at(name) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    let directory = is_kind(&st, libc::S_IFDIR);
    if directory {
        let dir = parent.subdir(name)?;
        for entry in dir.entries()? {
            remove_tree_at(&dir, &entry)?;
        }
    }
    match parent.unlink(name, directory) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Flushes every file: writeback is started on all of them before the first fsync, so
/// that their blocks are allocated together and one journal commit covers most of them
/// (a CRIU image is dozens of files; fsync after fsync would commit once per file).
/// Unlike syncfs, the cost does not depend on what other programs left unwritten.
fn flush_files(payload: &Payload, root: &Path) -> Result<()> {
    for (_, file) in &payload.files {
        // SAFETY: sync_file_range only reads the descriptor, open for the call. A
        // failure here is only lost speed: the fsync below reports real errors.
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
    for (relative, file) in &payload.files {
        file.sync_all()
            .map_err(|e| Error::io(format!("cannot flush {}", root.join(relative).display()), e))?;
    }
    Ok(())
}

/// The directories and regular files of a snapshot being published, open; symbolic
/// links and special files are neither listed nor followed.
struct Payload {
    /// The subdirectories, breadth-first, with their paths relative to the root.
    dirs: Vec<(Dir, String)>,
    /// `(path relative to the root with '/' separators, the open file)`, sorted, without
    /// the manifest and the records of files hashed while written.
    files: Vec<(String, File)>,
    /// Those records ([`PREHASHED_FILE`]), when there are.
    prehashed: Option<File>,
}

impl Payload {
    /// Scans the snapshot directory `root`, shown as `shown` in messages.
    fn scan(root: &Dir, shown: &Path) -> Result<Payload> {
        let mut dirs: Vec<(Dir, String)> = Vec::new();
        let mut files = Vec::new();
        let mut prehashed = None;
        let mut next = 0;
        loop {
            let (dir, prefix) = match next {
                0 => (root, ""),
                n => match dirs.get(n - 1) {
                    Some((dir, prefix)) => (dir, prefix.as_str()),
                    None => break,
                },
            };
            next += 1;
            let here = shown.join(prefix);
            let listing_failed = |e| Error::io(format!("cannot list {}", here.display()), e);
            let mut found = Vec::new();
            for entry in dir.entries().map_err(listing_failed)? {
                let name = entry.to_str().ok_or_else(|| {
                    Error::new(
                        codes::OPAL_ERR_BAD_PARAM,
                        format!(
                            "cannot list {} in the manifest: its name is not UTF-8",
                            here.join(&entry).display()
                        ),
                    )
                })?;
                let relative =
                    if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
                let st = dir.stat_at(&entry).map_err(listing_failed)?;
                if is_kind(&st, libc::S_IFDIR) {
                    found.push((dir.subdir(&entry).map_err(listing_failed)?, relative));
                } else if is_kind(&st, libc::S_IFREG) {
                    if relative != MANIFEST_FILE {
                        // O_NONBLOCK: should the name become a FIFO meanwhile, the open
                        // does not hang; the fstat below refuses it then.
                        let file = dir
                            .open_file(&entry, libc::O_RDONLY | libc::O_NONBLOCK, 0)
                            .map_err(listing_failed)?;
                        if !file.metadata().map_err(listing_failed)?.is_file() {
                            return Err(unlistable(&relative, "not a regular file or directory"));
                        }
                        if relative == PREHASHED_FILE {
                            prehashed = Some(file);
                        } else {
                            files.push((relative, file));
                        }
                    }
                } else {
                    return Err(unlistable(&relative, "not a regular file or directory"));
                }
            }
            dirs.extend(found);
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Payload { dirs, files, prehashed })
    }
}

/// A snapshot may hold only what its manifest can list (anything else makes it corrupt).
fn unlistable(relative: &str, what: &str) -> Error {
    Error::new(
        codes::OPAL_ERR_BAD_PARAM,
        format!("cannot publish the snapshot: {relative}: {what} cannot be listed in the manifest"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::metadata::METADATA_FILE;
    use crate::snapshot::test_support::{publish_options, publish_snapshot, TempDir};
    use std::fs;
    use std::process::{Child, Command};

    /// A child process that exists for as long as the guard does.
    struct LiveProcess(Child);

    impl LiveProcess {
        fn spawn() -> LiveProcess {
            LiveProcess(Command::new("sleep").arg("300").spawn().unwrap())
        }
        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }

    impl Drop for LiveProcess {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A PID that no process has: one of ours that has ended and been reaped.
    fn dead_pid() -> i32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_exists(pid));
        pid
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn own_pid() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn series_names_are_checked() {
        let long = "n".repeat(256);
        for bad in ["", "a/b", "/abs", ".", "..", "a..b", "..x", "a\0b", &long] {
            let err = check_series_name(bad).unwrap_err();
            assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM, "{bad:?}");
            assert!(err.message().contains("invalid snapshot name"), "{err}");
        }
        for good in ["opal_snapshot_42.ckpt", ".hidden", "a.b", "x", &long[1..]] {
            check_series_name(good).unwrap();
        }
        let base = TempDir::new();
        assert!(Series::open(base.path(), "../escape").is_err());
        assert!(!base.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn open_creates_private_directories_recursively() {
        use std::os::unix::fs::PermissionsExt;
        let base = TempDir::new();
        let series = Series::open(&base.path().join("deep/er"), "s.ckpt").unwrap();
        assert_eq!(series.path(), base.path().join("deep/er/s.ckpt"));
        for dir in ["deep", "deep/er", "deep/er/s.ckpt"] {
            let mode = fs::metadata(base.path().join(dir)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{dir}");
        }
        assert_eq!(Series::open(&base.path().join("deep/er"), "s.ckpt").unwrap(), series);
        assert!(series.snapshots().unwrap().is_empty());
    }

    #[test]
    fn open_refuses_symlinks_files_and_world_writable_directories() {
        use std::os::unix::fs::PermissionsExt;
        let base = TempDir::new();
        fs::create_dir(base.path().join("real")).unwrap();
        std::os::unix::fs::symlink(base.path().join("real"), base.path().join("link")).unwrap();
        fs::write(base.path().join("file"), b"").unwrap();
        fs::create_dir(base.path().join("open")).unwrap();
        fs::set_permissions(base.path().join("open"), fs::Permissions::from_mode(0o777)).unwrap();
        for (name, why) in
            [("link", "symbolic link"), ("file", "not a directory"), ("open", "world-writable")]
        {
            let err = Series::open(base.path(), name).unwrap_err();
            assert_eq!(err.code(), codes::OPAL_ERR_PERM, "{name}");
            assert!(err.message().contains(why), "{err}");
        }
    }

    #[test]
    fn begin_allocates_consecutive_numbers_and_publish_renames() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let first = series.begin(own_pid()).unwrap();
        assert_eq!(first.seq, 0);
        let second = series.begin(own_pid()).unwrap();
        assert_eq!(second.seq, 1);
        assert!(first
            .dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!(".tmp-0-{}-", own_pid())));
        // A temporary is never a published snapshot.
        assert!(series.snapshots().unwrap().is_empty());
        fs::write(second.dir.join(METADATA_FILE), "# PID: 1\n").unwrap();
        let published = second.publish(publish_options(0)).unwrap();
        assert_eq!(published, Published { seq: 1, path: series.path().join("1") });
        assert_eq!(series.snapshots().unwrap(), vec![1]);
        assert_eq!(verify(&published.path), Verdict::Good);
        drop(first);
        assert_eq!(series.begin(own_pid()).unwrap().seq, 2);
        assert_eq!(names(series.path()), vec![".lock", "1"]);
    }

    #[test]
    fn concurrent_writers_never_share_a_number() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let other_writer = LiveProcess::spawn();
        let writers: Vec<_> = [own_pid(), other_writer.pid()]
            .into_iter()
            .map(|pid| {
                let series = series.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| {
                            let pending = series.begin(pid).unwrap();
                            fs::write(pending.dir.join(METADATA_FILE), format!("# PID: {pid}\n"))
                                .unwrap();
                            pending.publish(publish_options(0)).unwrap().seq
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>());
        assert_eq!(series.snapshots().unwrap(), seqs);
    }

    #[test]
    fn stale_temporaries_are_removed_and_live_ones_counted() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let live_writer = LiveProcess::spawn();
        let stale = series.path().join(format!(".tmp-7-{}-00ff", dead_pid()));
        let live = series.path().join(format!(".tmp-4-{}-abcd", live_writer.pid()));
        let unrelated = series.path().join(".tmp-not-ours");
        for dir in [&stale, &live, &unrelated] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(stale.join("pages.img"), b"leftover").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        // The dead writer's 7 is free again; the live writer's 4 is not.
        assert_eq!(pending.seq, 5);
        assert!(!stale.exists());
        assert!(live.exists() && unrelated.exists());
    }

    #[test]
    fn temp_names_parse_only_when_well_formed() {
        let parsed = TempName::parse(".tmp-12-345-0a1b").unwrap();
        assert_eq!((parsed.seq, parsed.writer_pid, parsed.writer_start), (12, 345, None));
        let parsed = TempName::parse(".tmp-12-345-6789-0a1b").unwrap();
        assert_eq!((parsed.seq, parsed.writer_pid, parsed.writer_start), (12, 345, Some(6789)));
        let own = TempName::parse(&temp_name(3, own_pid())).unwrap();
        assert_eq!(own.writer_start, Some(own_start_time()));
        let name = temp_name(3, 99);
        assert!(TempName::parse(&name).is_some(), "{name}");
        assert_ne!(name, temp_name(3, 99));
        for bad in [
            ".tmp-12-345-",
            ".tmp-12-0-ab",
            ".tmp-12--5-ab",
            ".tmp-012-5-ab",
            ".tmp-1-5-xyz",
            "tmp-1-5-ab",
            ".tmp-1-5",
            ".tmp-1-5-07-ab",
            ".tmp-1-5-x-ab",
            ".tmp-1-5-6-ab-cd",
        ] {
            assert!(TempName::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(parse_seq("0"), Some(0));
        assert_eq!(parse_seq("+1"), None);
        assert_eq!(parse_seq("18446744073709551616"), None);
    }

    #[test]
    fn snapshots_lists_only_canonical_numeric_directories() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        for dir in ["10", "2", "007", "x", ".tmp-3-1-ab"] {
            fs::create_dir(series.path().join(dir)).unwrap();
        }
        fs::write(series.path().join("5"), b"").unwrap();
        assert_eq!(series.snapshots().unwrap(), vec![2, 10]);
    }

    #[test]
    fn publish_refuses_to_replace_an_existing_snapshot() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        fs::create_dir(series.snapshot_dir(0)).unwrap();
        let temp = pending.dir.clone();
        let err = pending.publish(publish_options(0)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_EXISTS);
        assert!(err.message().contains("already exists"), "{err}");
        assert!(!temp.exists());
        assert!(names(&series.snapshot_dir(0)).is_empty());
    }

    #[test]
    fn publish_lists_every_file_and_flushes_when_asked() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        fs::write(pending.dir.join(METADATA_FILE), "# PID: 1\n").unwrap();
        fs::create_dir_all(pending.dir.join("a/b")).unwrap();
        fs::write(pending.dir.join("a/b/core.img"), vec![7u8; 3000]).unwrap();
        let options = PublishOptions {
            fsync: true,
            identity: vec![IdentityEntry {
                path: "/bin/sh".into(),
                size: 1,
                build_id: Some("ab".into()),
            }],
            ..publish_options(0)
        };
        let published = pending.publish(options).unwrap();
        let manifest = Manifest::read(&published.path).unwrap();
        let listed: Vec<(&str, u64)> =
            manifest.files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(listed, vec![("a/b/core.img", 3000), (METADATA_FILE, 9)]);
        assert_eq!(manifest.identity[0].build_id.as_deref(), Some("ab"));
        assert_eq!(verify(&published.path), Verdict::Good);
    }

    /// Records of files hashed while written are trusted only for a file still as it was
    /// at the record's last look, and are never published themselves.
    #[test]
    fn publish_trusts_a_prehashed_record_only_for_an_unchanged_file() {
        use super::prehashed::{render, GrowingFileHash, PREHASHED_FILE};
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        let record_of = |name: &str, bytes: &[u8]| {
            fs::write(pending.dir.join(name), bytes).unwrap();
            let file = File::open(pending.dir.join(name)).unwrap();
            GrowingFileHash::new().finish(name, &file).unwrap().unwrap()
        };
        // A record that matches is used as it is: shown here by a hash that is not the
        // file's (in real use it is the hash of the very bytes).
        let mut kept = record_of("pages-1.img", &[1u8; 5000]);
        kept.hash = "0123456789abcdef0123456789abcdef".into();
        // Changed in place after the last look: same size, other bytes.
        let rewritten = record_of("pages-2.img", &[2u8; 5000]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new()
            .write(true)
            .open(pending.dir.join("pages-2.img"))
            .unwrap()
            .write_all(b"changed")
            .unwrap();
        // Grown after the last look.
        let grown = record_of("pages-3.img", &[3u8; 100]);
        std::fs::OpenOptions::new()
            .append(true)
            .open(pending.dir.join("pages-3.img"))
            .unwrap()
            .write_all(b"more")
            .unwrap();
        fs::write(pending.dir.join(PREHASHED_FILE), render(&[kept, rewritten, grown])).unwrap();
        let published = pending.publish(publish_options(0)).unwrap();
        let manifest = Manifest::read(&published.path).unwrap();
        let hash_of = |name: &str| {
            manifest.files.iter().find(|f| f.path == name).map(|f| f.hash.clone()).unwrap()
        };
        assert_eq!(hash_of("pages-1.img"), "0123456789abcdef0123456789abcdef");
        for name in ["pages-2.img", "pages-3.img"] {
            let bytes = fs::read(published.path.join(name)).unwrap();
            assert_eq!(hash_of(name), format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)));
        }
        assert!(!published.path.join(PREHASHED_FILE).exists());
        assert!(manifest.files.iter().all(|f| f.path != PREHASHED_FILE));
    }

    /// A records file cut short (a follower that died while writing it) gives nothing.
    #[test]
    fn publish_ignores_an_incomplete_prehashed_file() {
        use super::prehashed::{render, GrowingFileHash, PREHASHED_FILE};
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        fs::write(pending.dir.join(METADATA_FILE), "# PID: 1\n").unwrap();
        fs::write(pending.dir.join("pages-1.img"), [9u8; 300]).unwrap();
        let file = File::open(pending.dir.join("pages-1.img")).unwrap();
        let mut record = GrowingFileHash::new().finish("pages-1.img", &file).unwrap().unwrap();
        record.hash = "0123456789abcdef0123456789abcdef".into();
        let text = render(&[record]);
        fs::write(pending.dir.join(PREHASHED_FILE), &text[..text.len() - 2]).unwrap();
        let published = pending.publish(publish_options(0)).unwrap();
        assert_eq!(verify(&published.path), Verdict::Good);
        assert!(!published.path.join(PREHASHED_FILE).exists());
    }

    /// A verified snapshot holds only what its manifest lists, so a temporary holding
    /// anything else is not published as good.
    #[test]
    fn publish_refuses_what_a_manifest_cannot_list() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        type Add = fn(&Path);
        let extras: [(&str, Add); 2] = [
            ("link", |dir| std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap()),
            ("fifo", |dir| {
                let path =
                    std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes())
                        .unwrap();
                // SAFETY: a NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            }),
        ];
        for (name, add) in extras {
            let pending = series.begin(own_pid()).unwrap();
            let temporary = pending.dir.clone();
            fs::write(pending.dir.join(METADATA_FILE), "# PID: 1\n").unwrap();
            add(&pending.dir);
            let err = pending.publish(publish_options(0)).unwrap_err();
            assert!(
                err.message().contains(&format!("{name}: ")) && err.message().contains("manifest"),
                "{err}"
            );
            assert!(!temporary.exists(), "{name}");
        }
        assert_eq!(series.snapshots().unwrap(), Vec::<u64>::new());
    }

    /// A callback may leave an empty directory: the manifest lists directories, so it is
    /// checked like the files (and one that goes missing makes the snapshot corrupt).
    #[test]
    fn an_empty_directory_is_listed_and_checked() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        fs::write(pending.dir.join(METADATA_FILE), "# PID: 1\n").unwrap();
        fs::create_dir_all(pending.dir.join("a/empty")).unwrap();
        let published = pending.publish(publish_options(0)).unwrap();
        assert_eq!(Manifest::read(&published.path).unwrap().dirs, vec!["a", "a/empty"]);
        assert_eq!(verify(&published.path), Verdict::Good);
        fs::remove_dir(published.path.join("a/empty")).unwrap();
        assert_eq!(
            verify(&published.path),
            Verdict::Corrupt { file: "a/empty".into(), reason: "missing".into() }
        );
    }

    #[test]
    fn keep_prunes_the_oldest_snapshots_after_publishing() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        for _ in 0..5 {
            publish_snapshot(&series, b"data", 2);
        }
        assert_eq!(series.snapshots().unwrap(), vec![3, 4]);
        assert_eq!(names(series.path()), vec![".lock", "3", "4"]);
        // keep = 0 keeps everything.
        publish_snapshot(&series, b"data", 0);
        assert_eq!(series.snapshots().unwrap(), vec![3, 4, 5]);
    }

    #[test]
    fn pruning_never_removes_the_snapshot_just_published() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let slow = series.begin(own_pid()).unwrap();
        publish_snapshot(&series, b"newer", 1);
        fs::write(slow.dir.join(METADATA_FILE), "# PID: 1\n").unwrap();
        let published = slow.publish(publish_options(1)).unwrap();
        assert_eq!(published.seq, 0);
        assert_eq!(series.snapshots().unwrap(), vec![0, 1]);
    }

    #[test]
    fn abandon_and_drop_remove_the_temporary() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        fs::write(pending.dir.join("partial.img"), b"x").unwrap();
        let temp = pending.dir.clone();
        pending.abandon();
        assert!(!temp.exists());
        let temp = series.begin(own_pid()).unwrap().dir.clone();
        assert!(!temp.exists());
        assert_eq!(names(series.path()), vec![".lock"]);
    }

    #[test]
    fn the_lock_is_not_held_between_begin_and_publish() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let _pending = series.begin(own_pid()).unwrap();
        let file = File::open(series.path().join(LOCK_FILE)).unwrap();
        // A child forked by a concurrent test holds a copy of the (close-on-exec) lock
        // descriptor until it execs, so allow a moment.
        let free = (0..100).any(|_| {
            // SAFETY: the descriptor is open for the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            rc == 0 || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                false
            }
        });
        assert!(free, "the series lock is still held");
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    /// A uid that is neither ours nor root's (it need not name a user).
    const STRANGER: u32 = 4_000_123;

    /// `path` owned by [`STRANGER`] with `mode`; false when we may not chown (not root).
    fn give_to_stranger(path: &Path, mode: u32) -> bool {
        use std::os::unix::fs::PermissionsExt;
        if euid() != 0 {
            eprintln!("skipped: needs root to give a directory to another user");
            return false;
        }
        std::os::unix::fs::chown(path, Some(STRANGER), Some(STRANGER)).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        true
    }

    #[test]
    fn a_series_another_user_owns_is_refused_even_by_root() {
        let base = TempDir::new();
        let planted = base.path().join("opal_snapshot_1.ckpt");
        fs::create_dir(&planted).unwrap();
        if !give_to_stranger(&planted, 0o755) {
            return;
        }
        let err = Series::open(base.path(), "opal_snapshot_1.ckpt").unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_PERM);
        assert!(err.message().contains(&planted.display().to_string()), "{err}");
        assert!(err.message().contains(&format!("owned by uid {STRANGER}")), "{err}");
        // A writer given the series by path is refused as well, and writes nothing.
        assert!(Series::at(&planted).begin(own_pid()).is_err());
        assert!(names(&planted).is_empty());
    }

    #[test]
    fn a_base_directory_another_user_controls_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = TempDir::new();
        // Owned by another user: refused, and nothing is created in it.
        let theirs = base.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        if !give_to_stranger(&theirs, 0o755) {
            return;
        }
        let err = Series::open(&theirs.join("deeper"), "s").unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_PERM);
        assert!(
            err.message().contains(&format!("{} is owned by uid {STRANGER}", theirs.display())),
            "{err}"
        );
        assert!(names(&theirs).is_empty());
        // Ours, but writable by everyone without the sticky bit: refused.
        let open = base.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = Series::open(&open, "s").unwrap_err();
        assert!(
            err.message().contains(&format!("{} is writable by everyone", open.display())),
            "{err}"
        );
        assert!(names(&open).is_empty());
        // With the sticky bit (as /tmp): fine.
        let sticky = base.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        Series::open(&sticky, "s").unwrap();
        // A link on the way that another user owns is not followed.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&sticky, &link).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["-h", &STRANGER.to_string()])
            .arg(&link)
            .status();
        let err = Series::open(&link, "s").unwrap_err();
        assert!(
            err.message().contains(&format!(
                "{} is a symbolic link owned by uid {STRANGER}",
                link.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_link_of_our_own_on_the_way_is_followed_and_the_real_path_recorded() {
        let base = TempDir::new();
        fs::create_dir(base.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", base.path().join("link")).unwrap();
        let series = Series::open(&base.path().join("link/./sub/../sub"), "s").unwrap();
        assert_eq!(series.path(), base.path().join("real/sub/s"));
        assert_eq!(publish_snapshot(&series, b"x", 0).path, base.path().join("real/sub/s/0"));
        // The same from the working directory.
        let up: PathBuf =
            std::env::current_dir().unwrap().components().skip(1).map(|_| "..").collect();
        let relative = up.join(base.path().strip_prefix("/").unwrap()).join("link/sub");
        assert_eq!(Series::open(&relative, "s").unwrap(), series);
        assert_eq!(Series::at(&relative.join("s")).begin(own_pid()).unwrap().seq, 1);
    }

    /// While `armed`, replaces every `.tmp-*` directory of `series` by a symbolic link to
    /// `victim` (the original is moved aside, as an attacker would), until `stop` is set;
    /// returns how many it replaced.
    fn swap_temporaries(
        series: &Path,
        victim: &Path,
        armed: &std::sync::atomic::AtomicBool,
        stop: &std::sync::atomic::AtomicBool,
    ) -> u64 {
        use std::sync::atomic::Ordering;
        let mut swapped = 0;
        let mut pass = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if !armed.load(Ordering::Relaxed) {
                std::thread::yield_now();
                continue;
            }
            // Varying pauses, so that the swap lands in every step of a checkpoint.
            pass += 1;
            std::thread::sleep(std::time::Duration::from_micros(pass % 7 * 30));
            for entry in fs::read_dir(series).unwrap().flatten() {
                let name = entry.file_name().into_string().unwrap();
                if !name.starts_with(".tmp-") || entry.file_type().map_or(true, |t| t.is_symlink())
                {
                    continue;
                }
                let aside = series.join(format!("aside{name}"));
                if fs::rename(entry.path(), &aside).is_ok()
                    && std::os::unix::fs::symlink(victim, entry.path()).is_ok()
                {
                    swapped += 1;
                }
            }
        }
        swapped
    }

    #[test]
    fn a_temporary_swapped_for_a_link_is_never_written_through_nor_published() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let victim = base.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let (armed, stop) = (AtomicBool::new(false), AtomicBool::new(false));
        let (mut published, mut failed) = (0u64, 0u64);
        /// Stops the attacker also when an assertion fails, so that the scope ends.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let swapped = std::thread::scope(|scope| {
            let attacker = scope.spawn(|| swap_temporaries(series.path(), &victim, &armed, &stop));
            let _stop = StopOnDrop(&stop);
            for round in 0..300 {
                // Two rounds in three under attack, so that both outcomes occur.
                armed.store(round % 3 != 0, Ordering::Relaxed);
                let Ok(pending) = series.begin(own_pid()) else {
                    failed += 1;
                    continue;
                };
                let _ = pending.write_file(METADATA_FILE, b"# PID: 1\n");
                let _ = pending.write_file("payload.img", b"payload");
                match pending.publish(publish_options(0)) {
                    Ok(done) => {
                        published += 1;
                        let meta = fs::symlink_metadata(&done.path).unwrap();
                        assert!(meta.is_dir(), "{} is published as a link", done.path.display());
                    }
                    Err(e) => {
                        assert!(e.message().contains("replaced"), "{e}");
                        failed += 1;
                    }
                }
            }
            drop(_stop);
            attacker.join().unwrap()
        });
        eprintln!("race: 300 checkpoints, {published} published, {failed} failed, {swapped} temporaries swapped");
        assert!(names(&victim).is_empty(), "written into the victim: {:?}", names(&victim));
        assert!(swapped > 0 && published > 0, "{swapped} swapped, {published} published");
        for seq in series.snapshots().unwrap() {
            let dir = series.snapshot_dir(seq);
            assert!(!fs::symlink_metadata(&dir).unwrap().file_type().is_symlink());
            assert_eq!(verify(&dir), Verdict::Good, "{}", dir.display());
        }
    }

    #[test]
    fn pruning_and_stale_removal_unlink_links_without_following_them() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let victim = base.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("precious"), b"keep me").unwrap();
        publish_snapshot(&series, b"old", 0);
        // Snapshot 0 replaced by a link to the victim, and a dead writer's "temporary"
        // that is a link to it too.
        fs::rename(series.snapshot_dir(0), base.path().join("aside")).unwrap();
        std::os::unix::fs::symlink(&victim, series.snapshot_dir(0)).unwrap();
        let stale = series.path().join(format!(".tmp-9-{}-00ff", dead_pid()));
        std::os::unix::fs::symlink(&victim, &stale).unwrap();
        publish_snapshot(&series, b"new", 1);
        assert_eq!(names(&victim), vec!["precious"]);
        assert!(fs::symlink_metadata(&stale).is_err());
        assert!(fs::symlink_metadata(series.snapshot_dir(0)).is_err());
    }

    fn own_start_time() -> u64 {
        start_time(own_pid()).unwrap()
    }

    #[test]
    fn a_temporary_of_a_live_pid_that_is_not_its_writer_is_removed() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        let live_writer = LiveProcess::spawn();
        // Our PID with another start time: what a process restored by CRIU with the
        // PID of the writer it was dumped from finds.
        let not_its_writer =
            series.path().join(format!(".tmp-8-{}-{}-00ff", own_pid(), own_start_time() + 1));
        let live = series.path().join(format!(
            ".tmp-4-{}-{}-abcd",
            live_writer.pid(),
            start_time(live_writer.pid()).unwrap()
        ));
        for dir in [&not_its_writer, &live] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(not_its_writer.join("pages-1.img"), b"leftover").unwrap();
        let pending = series.begin(own_pid()).unwrap();
        assert_eq!(pending.seq, 5);
        assert!(!not_its_writer.exists());
        assert!(live.exists());
        // Our own new temporary carries our start time, so it counts as live.
        let name = pending.dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(&format!(".tmp-5-{}-{}-", own_pid(), own_start_time())), "{name}");
        assert_eq!(series.begin(own_pid()).unwrap().seq, 6);
    }

    #[test]
    fn newest_good_skips_damaged_snapshots() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        assert_eq!(series.newest_good().unwrap(), None);
        for _ in 0..3 {
            publish_snapshot(&series, b"payload", 0);
        }
        fs::write(series.snapshot_dir(2).join("payload.img"), b"tampered").unwrap();
        fs::remove_file(series.snapshot_dir(1).join(MANIFEST_FILE)).unwrap();
        fs::remove_file(series.snapshot_dir(1).join(METADATA_FILE)).unwrap();
        let (seq, skipped) = series.newest_good().unwrap().unwrap();
        assert_eq!(seq, 0);
        let reasons: Vec<(u64, &str)> =
            skipped.iter().map(|(seq, why)| (*seq, why.split(':').next().unwrap())).collect();
        assert_eq!(reasons, vec![(2, "corrupt"), (1, "corrupt")]);
        assert!(skipped[1].1.contains(MANIFEST_FILE), "{skipped:?}");
    }
}

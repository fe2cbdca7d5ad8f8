//! A series of numbered snapshots, `<base>/<name>/<seq>/`, and their atomic publication.
//!
//! A snapshot is written under a temporary name `.tmp-<seq>-<writer pid>-<random hex>`
//! and renamed to `<seq>` only when complete, so a directory with a numeric name is
//! always a whole snapshot. Names are allocated and changed under `flock` on
//! `<series>/.lock`, held only for those few renames and never while a component works,
//! so a writer that dies leaves nothing that blocks the next one; its temporary is
//! removed by the next writer that finds its PID gone.

use super::manifest::{
    hash_file, verify, FileEntry, IdentityEntry, Manifest, Verdict, MANIFEST_FILE,
};
use crate::codes;
use crate::error::{Error, Result};
use std::collections::hash_map::RandomState;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The series lock file.
pub const LOCK_FILE: &str = ".lock";
/// Prefix of snapshots being written, or being deleted by pruning.
const TEMP_PREFIX: &str = ".tmp-";

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
    /// Opens the series `<base>/<name>`, creating it and any missing parent with mode
    /// 0700. A relative `base` is taken from the working directory, so that the path
    /// recorded in snapshots is absolute. Refuses a bad name, and a series path that is
    /// a symbolic link, not a directory, world-writable, or owned by another user
    /// (unless we are root).
    pub fn open(base: &Path, name: &str) -> Result<Series> {
        check_series_name(name)?;
        let base = if base.is_absolute() {
            base.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("cannot read the working directory", e))?
                .join(base)
        };
        let path = base.join(name);
        if let Err(err) = DirBuilder::new().recursive(true).mode(0o700).create(&path) {
            // Something that exists but is no directory gets the clearer message below.
            if fs::symlink_metadata(&path).is_err() {
                return Err(Error::io(
                    format!("cannot create series directory {}", path.display()),
                    err,
                ));
            }
        }
        check_series_dir(&path)?;
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
        let listing_failed =
            |e| Error::io(format!("cannot list series {}", self.path.display()), e);
        let mut seqs = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(listing_failed)? {
            let entry = entry.map_err(listing_failed)?;
            if let Some(seq) = entry.file_name().to_str().and_then(parse_seq) {
                if entry.file_type().map_err(listing_failed)?.is_dir() {
                    seqs.push(seq);
                }
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
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

    /// Starts a new snapshot written by process `writer_pid`: allocates the next sequence
    /// number (one past every published snapshot and every temporary of a live writer)
    /// and creates its temporary directory (mode 0700). Temporaries of writers that no
    /// longer exist are removed.
    pub fn begin(&self, writer_pid: i32) -> Result<PendingSnapshot> {
        let (seq, dir, stale) = {
            let _lock = SeriesLock::acquire(&self.path)?;
            let mut newest = self.snapshots()?.last().copied();
            let mut stale = Vec::new();
            for (path, temp) in self.temporaries()? {
                if process_exists(temp.writer_pid) {
                    newest = newest.max(Some(temp.seq));
                } else {
                    stale.push(path);
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
            let dir = self.path.join(temp_name(seq, writer_pid));
            DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
                Error::io(format!("cannot create snapshot directory {}", dir.display()), e)
            })?;
            (seq, dir, stale)
        };
        // Deleting can take long (GiB of images), so it happens after the lock is released;
        // another writer removing the same stale temporary at once is harmless.
        for path in stale {
            log::info!(target: "crs", "crs: removing {} left by a writer that no longer exists", path.display());
            remove_tree(&path);
        }
        Ok(PendingSnapshot { seq, dir, series: self.clone(), active: true })
    }

    /// Every temporary in the series whose name parses.
    fn temporaries(&self) -> Result<Vec<(PathBuf, TempName)>> {
        let listing_failed =
            |e| Error::io(format!("cannot list series {}", self.path.display()), e);
        let mut temporaries = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(listing_failed)? {
            let entry = entry.map_err(listing_failed)?;
            if let Some(temp) = entry.file_name().to_str().and_then(TempName::parse) {
                temporaries.push((entry.path(), temp));
            }
        }
        Ok(temporaries)
    }

    /// Under the lock: renames the oldest published snapshots beyond the newest `keep`
    /// (0 keeps all; `published`, the one just written, is never one of them) to
    /// temporaries of this process, so that none is ever seen half-deleted, and returns
    /// them for deletion. Failures are logged: they leave an extra snapshot, never a
    /// broken one.
    fn retire_beyond(&self, keep: u64, published: u64) -> Vec<PathBuf> {
        if keep == 0 {
            return Vec::new();
        }
        let seqs = match self.snapshots() {
            Ok(seqs) => seqs,
            Err(e) => {
                log::warn!(target: "crs", "crs: not pruning: {e}");
                return Vec::new();
            }
        };
        let excess = seqs.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
        let mut retired = Vec::new();
        for seq in seqs.into_iter().take(excess).filter(|&seq| seq != published) {
            let from = self.snapshot_dir(seq);
            let to = self.path.join(temp_name(seq, std::process::id() as i32));
            match fs::rename(&from, &to) {
                Ok(()) => retired.push(to),
                Err(e) => log::warn!(target: "crs", "crs: cannot prune {}: {e}", from.display()),
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
    /// The temporary directory the component writes into.
    pub dir: PathBuf,
    series: Series,
    /// Whether `dir` is still ours to remove.
    active: bool,
}

impl PendingSnapshot {
    /// Writes the manifest of everything in the directory, flushes it if asked, renames
    /// it to `<series>/<seq>` (failing if that exists) and prunes to `options.keep`.
    /// On failure the temporary directory is removed.
    pub fn publish(mut self, options: PublishOptions) -> Result<Published> {
        let payload = Payload::scan(&self.dir)?;
        // Flushing the payload (disk-bound) and hashing it (reads from the page cache)
        // overlap: for a GiB-sized CRIU image the checksums then cost almost nothing.
        let (files, flushed) = std::thread::scope(|scope| {
            let flusher = options.fsync.then(|| scope.spawn(|| flush_files(&payload.files)));
            let files = payload
                .files
                .iter()
                .map(|(relative, path)| {
                    hash_file(path).map(|(size, hash)| FileEntry::new(relative.clone(), size, hash))
                })
                .collect::<Result<Vec<_>>>();
            let flushed = flusher.map_or(Ok(()), |thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(Error::msg("the snapshot flush thread panicked")))
            });
            (files, flushed)
        });
        let files = files?;
        flushed?;
        Manifest::new(&options.component, options.pid, &options.host, files, options.identity)
            .write_to(&self.dir)?;
        if options.fsync {
            sync_path(&self.dir.join(MANIFEST_FILE))?;
            // Deepest first, the snapshot directory itself last.
            for dir in payload.dirs.iter().rev() {
                sync_path(dir)?;
            }
        }

        let path = self.series.snapshot_dir(self.seq);
        let retired = {
            let _lock = SeriesLock::acquire(self.series.path())?;
            // rename(2) would silently replace an empty directory.
            if fs::symlink_metadata(&path).is_ok() {
                return Err(Error::new(
                    codes::OPAL_EXISTS,
                    format!("cannot publish snapshot {}: it already exists", path.display()),
                ));
            }
            fs::rename(&self.dir, &path)
                .map_err(|e| Error::io(format!("cannot publish snapshot {}", path.display()), e))?;
            self.active = false;
            if options.fsync {
                sync_path(self.series.path()).map_err(|e| {
                    e.context(format!("snapshot {} is published but not flushed", path.display()))
                })?;
            }
            self.series.retire_beyond(options.keep, self.seq)
        };
        for dir in retired {
            log::debug!(target: "crs", "crs: pruning {}", dir.display());
            remove_tree(&dir);
        }
        Ok(Published { seq: self.seq, path })
    }

    /// Gives the snapshot up and removes its temporary directory.
    pub fn abandon(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        if std::mem::take(&mut self.active) {
            remove_tree(&self.dir);
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
    fn acquire(series: &Path) -> Result<SeriesLock> {
        let path = series.join(LOCK_FILE);
        let failed = |e| Error::io(format!("cannot lock {}", path.display()), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
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

/// The parts of a temporary's name `.tmp-<seq>-<writer pid>-<random hex>`.
struct TempName {
    seq: u64,
    writer_pid: i32,
}

impl TempName {
    fn parse(name: &str) -> Option<TempName> {
        let mut parts = name.strip_prefix(TEMP_PREFIX)?.splitn(3, '-');
        let seq = parse_seq(parts.next()?)?;
        // PID 0 and negative PIDs would make kill() address process groups.
        let writer_pid = parts.next()?.parse().ok().filter(|&pid: &i32| pid > 0)?;
        let random = parts.next()?;
        (!random.is_empty() && random.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(TempName { seq, writer_pid })
    }
}

fn temp_name(seq: u64, writer_pid: i32) -> String {
    format!("{TEMP_PREFIX}{seq}-{writer_pid}-{:016x}", random_u64())
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

fn check_series_dir(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("cannot use series {}", path.display()), e))?;
    let why = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_string()
    } else if !meta.is_dir() {
        "it is not a directory".to_string()
    } else if meta.mode() & 0o002 != 0 {
        "it is world-writable".to_string()
    } else {
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 || meta.uid() == euid {
            return Ok(());
        }
        format!("it is owned by uid {}, not by this user", meta.uid())
    };
    Err(Error::new(codes::OPAL_ERR_PERM, format!("refusing series {}: {why}", path.display())))
}

/// Removes a directory tree, logging rather than failing: what is left is a temporary
/// that the next writer of the series removes.
fn remove_tree(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => log::warn!(target: "crs", "crs: cannot remove {}: {e}", path.display()),
    }
}

/// Flushes every file: writeback is started on all of them before the first fsync, so
/// that their blocks are allocated together and one journal commit covers most of them
/// (a CRIU image is dozens of files; fsync after fsync would commit once per file).
/// Unlike syncfs, the cost does not depend on what other programs left unwritten.
fn flush_files(files: &[(String, PathBuf)]) -> Result<()> {
    let opened = files
        .iter()
        .map(|(_, path)| {
            File::open(path).map_err(|e| Error::io(format!("cannot flush {}", path.display()), e))
        })
        .collect::<Result<Vec<_>>>()?;
    for file in &opened {
        // SAFETY: sync_file_range only reads the descriptor, open for the call. A
        // failure here is only lost speed: the fsync below reports real errors.
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
    for (file, (_, path)) in opened.iter().zip(files) {
        file.sync_all().map_err(|e| Error::io(format!("cannot flush {}", path.display()), e))?;
    }
    Ok(())
}

fn sync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| Error::io(format!("cannot flush {}", path.display()), e))
}

/// The directories and regular files of a snapshot being published; symbolic links and
/// special files are neither listed nor followed.
struct Payload {
    /// Breadth-first, the root first.
    dirs: Vec<PathBuf>,
    /// `(path relative to the root with '/' separators, full path)`, sorted, without
    /// the manifest.
    files: Vec<(String, PathBuf)>,
}

impl Payload {
    fn scan(root: &Path) -> Result<Payload> {
        let mut dirs = vec![(root.to_path_buf(), String::new())];
        let mut files = Vec::new();
        let mut next = 0;
        while let Some((dir, prefix)) = dirs.get(next).cloned() {
            next += 1;
            let listing_failed = |e| Error::io(format!("cannot list {}", dir.display()), e);
            for entry in fs::read_dir(&dir).map_err(listing_failed)? {
                let entry = entry.map_err(listing_failed)?;
                let kind = entry.file_type().map_err(listing_failed)?;
                let name = entry.file_name();
                let name = name.to_str().ok_or_else(|| {
                    Error::new(
                        codes::OPAL_ERR_BAD_PARAM,
                        format!(
                            "cannot list {} in the manifest: its name is not UTF-8",
                            entry.path().display()
                        ),
                    )
                })?;
                let relative =
                    if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
                if kind.is_dir() {
                    dirs.push((entry.path(), relative));
                } else if kind.is_file() {
                    if relative != MANIFEST_FILE {
                        files.push((relative, entry.path()));
                    }
                } else {
                    return Err(unlistable(&relative, "not a regular file or directory"));
                }
            }
        }
        // A directory is listed through the files in it: an empty one cannot be (the
        // deepest is named).
        if let Some((_, relative)) =
            dirs.iter().skip(1).rev().find(|(_, dir)| {
                !files.iter().any(|(file, _)| file.starts_with(&format!("{dir}/")))
            })
        {
            return Err(unlistable(relative, "an empty directory"));
        }
        files.sort();
        Ok(Payload { dirs: dirs.into_iter().map(|(dir, _)| dir).collect(), files })
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
        assert_eq!((parsed.seq, parsed.writer_pid), (12, 345));
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

    /// A verified snapshot holds only what its manifest lists, so a temporary holding
    /// anything else is not published as good.
    #[test]
    fn publish_refuses_what_a_manifest_cannot_list() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        type Add = fn(&Path);
        let extras: [(&str, Add); 2] = [
            ("link", |dir| std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap()),
            ("a/empty", |dir| fs::create_dir_all(dir.join("a/empty")).unwrap()),
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

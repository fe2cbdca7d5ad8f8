//! `opalcrs_manifest.json`: what a published snapshot holds, so that a snapshot that is
//! incomplete or damaged is found before a restart is attempted from it.

use super::metadata::METADATA_FILE;
use crate::codes;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};
use std::time::{SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::Xxh3;

/// Name of the manifest inside a snapshot directory.
pub const MANIFEST_FILE: &str = "opalcrs_manifest.json";
/// The manifest format this library writes and the newest it reads.
pub const MANIFEST_FORMAT: u64 = 1;
/// Hash of every file: XXH3-128, fast enough for GiB-sized CRIU images.
pub const HASH_ALGORITHM: &str = "xxh3-128";

const HASH_BUFFER_SIZE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u64,
    pub library_version: String,
    pub component: String,
    pub pid: i32,
    pub host: String,
    /// RFC 3339, UTC, millisecond precision.
    pub created: String,
    pub created_unix_ms: u64,
    pub files: Vec<FileEntry>,
    /// Every subdirectory, by its path relative to the snapshot directory, so that an
    /// empty one is listed too (older manifests have none: their directories are those
    /// that hold a listed file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<String>,
    /// The executable and mapped libraries a criu snapshot depends on.
    pub identity: Vec<IdentityEntry>,
}

/// One file of the snapshot, by its path relative to the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub hash: String,
    pub algorithm: String,
}

/// A file outside the snapshot that a restore needs unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEntry {
    pub path: String,
    pub size: u64,
    pub build_id: Option<String>,
}

impl IdentityEntry {
    /// The file at `path` as it is now; None if it cannot be read.
    pub fn of(path: &Path) -> Option<IdentityEntry> {
        let size = fs::metadata(path).ok()?.len();
        Some(IdentityEntry {
            path: path.display().to_string(),
            size,
            build_id: crate::elf::build_id(path),
        })
    }

    /// How the file differs from this record now, if it does.
    fn change(&self) -> Option<String> {
        match IdentityEntry::of(Path::new(&self.path)) {
            None => Some("it is gone".to_string()),
            Some(now) if now.build_id != self.build_id => Some(format!(
                "build-id {} is now {}",
                self.build_id.as_deref().unwrap_or("-"),
                now.build_id.as_deref().unwrap_or("-")
            )),
            Some(now) if now.size != self.size => {
                Some(format!("size {} is now {}", self.size, now.size))
            }
            Some(_) => None,
        }
    }
}

impl FileEntry {
    /// An entry hashed with [`HASH_ALGORITHM`], as [`hash_file`] computes.
    pub fn new(path: String, size: u64, hash: String) -> FileEntry {
        FileEntry { path, size, hash, algorithm: HASH_ALGORITHM.to_string() }
    }
}

impl Manifest {
    /// A manifest of the current format, created now by this library version.
    pub fn new(
        component: &str,
        pid: i32,
        host: &str,
        files: Vec<FileEntry>,
        dirs: Vec<String>,
        identity: Vec<IdentityEntry>,
    ) -> Manifest {
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Manifest {
            format: MANIFEST_FORMAT,
            library_version: env!("CARGO_PKG_VERSION").to_string(),
            component: component.to_string(),
            pid,
            host: host.to_string(),
            created: rfc3339_utc(created_unix_ms),
            created_unix_ms,
            files,
            dirs,
            identity,
        }
    }

    /// Parses a manifest, checking its format version before anything else so that a
    /// newer format is reported as such rather than as a field that does not parse.
    pub fn from_json(text: &str) -> Result<Manifest> {
        let unreadable = |why: String| {
            Error::new(codes::OPAL_ERR_FILE_READ_FAILURE, format!("unreadable manifest: {why}"))
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(MANIFEST_FORMAT) => serde_json::from_value(value).map_err(|e| unreadable(e.to_string())),
            None | Some(0) => Err(unreadable("no format version".to_string())),
            Some(newer) => Err(Error::new(
                codes::OPAL_ERR_NOT_SUPPORTED,
                format!("manifest format {newer} is newer than this library supports ({MANIFEST_FORMAT})"),
            )),
        }
    }

    /// Reads `<snapshot_dir>/opalcrs_manifest.json`.
    /// The first recorded executable or library that changed since the checkpoint
    /// ("PATH changed since the checkpoint (why)"): an image restores only onto the
    /// same files.
    pub fn identity_change(&self) -> Option<String> {
        self.identity.iter().find_map(|recorded| {
            let why = recorded.change()?;
            Some(format!("{} changed since the checkpoint ({why})", recorded.path))
        })
    }

    pub fn read(snapshot_dir: &Path) -> Result<Manifest> {
        let path = snapshot_dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Manifest::from_json(&text).map_err(|e| e.context(path.display()))
    }

    /// The text of [`MANIFEST_FILE`].
    pub fn to_json(&self) -> Result<String> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::msg(format!("cannot encode manifest: {e}")))?;
        text.push('\n');
        Ok(text)
    }

    /// Writes `<snapshot_dir>/opalcrs_manifest.json` (mode 0600, replacing any).
    pub fn write_to(&self, snapshot_dir: &Path) -> Result<()> {
        let path = snapshot_dir.join(MANIFEST_FILE);
        let text = self.to_json()?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }
}

/// What [`verify`] found in a snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every file listed in the manifest is present with its size and hash, nothing
    /// else is there, and the metadata file is listed.
    Good,
    /// A directory that is not a numbered snapshot, with a `snapshot_meta.data` and no
    /// manifest: the 1.6/1.7 layout, which cannot be checked. Used, but every use says
    /// it is unchecked.
    Legacy,
    /// What was written is damaged: a listed file is missing or differs, something
    /// unlisted is there, or the manifest is missing (from a numbered snapshot) or
    /// cannot be used.
    Corrupt { file: String, reason: String },
    /// Nothing, or not enough, was ever written: an empty numbered directory, a directory
    /// with neither manifest nor metadata, or a manifest that lists no metadata.
    Incomplete { reason: String },
}

impl Verdict {
    /// Whether a restart may use the snapshot.
    pub fn is_usable(&self) -> bool {
        matches!(self, Verdict::Good | Verdict::Legacy)
    }

    /// One word for listings: `good`, `legacy`, `corrupt` or `incomplete`.
    pub fn state(&self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Legacy => "legacy",
            Verdict::Corrupt { .. } => "corrupt",
            Verdict::Incomplete { .. } => "incomplete",
        }
    }

    /// What is wrong (or, for a legacy snapshot, why it was not checked); None if good.
    pub fn detail(&self) -> Option<String> {
        match self {
            Verdict::Good => None,
            Verdict::Legacy => Some(format!("no {MANIFEST_FILE} (1.6/1.7 layout): unchecked")),
            Verdict::Corrupt { file, reason } => Some(format!("{file}: {reason}")),
            Verdict::Incomplete { reason } => Some(reason.clone()),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Good => f.write_str("good"),
            Verdict::Legacy => f.write_str("legacy snapshot without manifest, unchecked"),
            Verdict::Corrupt { file, reason } => write!(f, "corrupt: {file}: {reason}"),
            Verdict::Incomplete { reason } => write!(f, "incomplete: {reason}"),
        }
    }
}

/// Checks a snapshot directory against its manifest: every listed file is there with
/// its size and hash, and nothing else is (see [`verify_sizes`] for the rules).
pub fn verify(snapshot_dir: &Path) -> Verdict {
    check(snapshot_dir, true)
}

/// [`verify`] without reading the files' contents: presence, type and size of every
/// listed file, and nothing unlisted. Cheap enough to run before every restore.
///
/// A numbered snapshot (a directory named by a sequence number, as in a series) always
/// has a manifest: without one it is corrupt. Only a directory that is not numbered and
/// holds `snapshot_meta.data` without a manifest is a 1.6/1.7 snapshot ([`Verdict::Legacy`]).
pub fn verify_sizes(snapshot_dir: &Path) -> Verdict {
    check(snapshot_dir, false)
}

fn check(snapshot_dir: &Path, hashes: bool) -> Verdict {
    let has_metadata =
        fs::symlink_metadata(snapshot_dir.join(METADATA_FILE)).is_ok_and(|meta| meta.is_file());
    let manifest_corrupt =
        |reason: String| Verdict::Corrupt { file: MANIFEST_FILE.to_string(), reason };
    let manifest = match fs::read_to_string(snapshot_dir.join(MANIFEST_FILE)) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return without_manifest(snapshot_dir, has_metadata);
        }
        Err(e) => return manifest_corrupt(e.to_string()),
        Ok(text) => match Manifest::from_json(&text) {
            Ok(manifest) => manifest,
            Err(e) => return manifest_corrupt(e.message().to_string()),
        },
    };
    // Cheap checks of everything first, so that a missing or truncated file is named
    // without reading the others.
    for entry in &manifest.files {
        if let Err(reason) = check_entry(snapshot_dir, entry) {
            return Verdict::Corrupt { file: entry.path.clone(), reason };
        }
    }
    for dir in &manifest.dirs {
        if let Err(reason) = check_dir(snapshot_dir, dir) {
            return Verdict::Corrupt { file: dir.clone(), reason };
        }
    }
    if let Some((file, reason)) = first_unlisted(snapshot_dir, &manifest) {
        return Verdict::Corrupt { file, reason };
    }
    if hashes {
        for entry in &manifest.files {
            if let Err(reason) = check_hash(snapshot_dir, entry) {
                return Verdict::Corrupt { file: entry.path.clone(), reason };
            }
        }
    }
    if has_metadata {
        Verdict::Good
    } else {
        Verdict::Incomplete { reason: format!("no {METADATA_FILE}") }
    }
}

/// The verdict on a directory without a manifest.
fn without_manifest(snapshot_dir: &Path, has_metadata: bool) -> Verdict {
    if !is_numbered(snapshot_dir) {
        return if has_metadata {
            Verdict::Legacy
        } else {
            Verdict::Incomplete { reason: format!("neither {MANIFEST_FILE} nor {METADATA_FILE}") }
        };
    }
    let empty = fs::read_dir(snapshot_dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty {
        Verdict::Incomplete { reason: "empty: nothing was written in it".to_string() }
    } else {
        Verdict::Corrupt { file: MANIFEST_FILE.to_string(), reason: "missing".to_string() }
    }
}

/// Whether `dir` is named like a numbered snapshot of a series.
fn is_numbered(dir: &Path) -> bool {
    let name = match dir.file_name() {
        Some(name) => Some(name.to_os_string()),
        // "." or "..": the name of the directory it stands for.
        None => fs::canonicalize(dir).ok().and_then(|real| real.file_name().map(Into::into)),
    };
    name.as_deref().and_then(|name| name.to_str()).and_then(super::series::parse_seq).is_some()
}

/// Whether `name`, directly in a snapshot directory (or one nested in it, as a criu
/// job's node image is), is what a restore writes into the snapshot it restores: CRIU's
/// `stats-restore` and the restore log [`restore_log_name`].
fn is_restore_output(name: &str) -> bool {
    name == "stats-restore"
        || name
            .strip_prefix("restore-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Name of the log a CRIU restore by process `pid` writes into the snapshot it restores.
pub fn restore_log_name(pid: u32) -> String {
    format!("restore-{pid}.log")
}

/// The first entry under `snapshot_dir` (sorted, depth first) that the manifest does not
/// account for: a file it does not list, a directory that holds no listed file, a
/// symbolic link or any other kind of file; or a directory that cannot be listed. Links
/// are not followed. `(entry, why)`.
fn first_unlisted(snapshot_dir: &Path, manifest: &Manifest) -> Option<(String, String)> {
    let listed: HashSet<&str> = manifest.files.iter().map(|entry| entry.path.as_str()).collect();
    let parents: HashSet<&str> = manifest
        .files
        .iter()
        .flat_map(|entry| entry.path.match_indices('/').map(|(at, _)| &entry.path[..at]))
        .chain(manifest.dirs.iter().map(String::as_str))
        .collect();
    let mut pending = vec![(snapshot_dir.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let mut entries =
            match fs::read_dir(&dir).and_then(|entries| entries.collect::<io::Result<Vec<_>>>()) {
                Ok(entries) => entries,
                Err(e) => {
                    let name = if prefix.is_empty() { ".".to_string() } else { prefix };
                    return Some((name, format!("cannot be listed: {e}")));
                }
            };
        entries.sort_by_key(|entry| entry.file_name());
        let mut subdirs = Vec::new();
        for entry in entries {
            // A name that is not UTF-8 is never listed (a manifest's paths are UTF-8).
            let (name, utf8) = match entry.file_name().into_string() {
                Ok(name) => (name, true),
                Err(raw) => (raw.to_string_lossy().into_owned(), false),
            };
            let relative =
                if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let accounted = utf8
                && match entry.file_type() {
                    Ok(kind) if kind.is_file() => {
                        listed.contains(relative.as_str())
                            || prefix.is_empty() && name == MANIFEST_FILE
                            // In this snapshot or one nested in it (its manifest listed).
                            || is_restore_output(&name)
                                && (prefix.is_empty()
                                    || listed
                                        .contains(format!("{prefix}/{MANIFEST_FILE}").as_str()))
                    }
                    Ok(kind) if kind.is_dir() && parents.contains(relative.as_str()) => {
                        subdirs.push((entry.path(), relative.clone()));
                        true
                    }
                    _ => false,
                };
            if !accounted {
                return Some((relative, "not listed in the manifest".to_string()));
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    None
}

/// Compares one listed file's presence, type and size with the disk; the error is the
/// reason it differs.
fn check_entry(snapshot_dir: &Path, entry: &FileEntry) -> std::result::Result<(), String> {
    let relative = inside(&entry.path)?;
    if entry.algorithm != HASH_ALGORITHM {
        return Err(format!("unsupported hash algorithm {:?}", entry.algorithm));
    }
    let size = match fs::symlink_metadata(snapshot_dir.join(relative)) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Err("missing".to_string()),
        Err(e) => return Err(e.to_string()),
        Ok(meta) if !meta.is_file() => return Err("not a regular file".to_string()),
        Ok(meta) => meta.len(),
    };
    if size != entry.size {
        return Err(format!("size {size}, expected {}", entry.size));
    }
    Ok(())
}

/// Checks that a listed directory is there, as a directory.
fn check_dir(snapshot_dir: &Path, dir: &str) -> std::result::Result<(), String> {
    match fs::symlink_metadata(snapshot_dir.join(inside(dir)?)) {
        Err(e) if e.kind() == ErrorKind::NotFound => Err("missing".to_string()),
        Err(e) => Err(e.to_string()),
        Ok(meta) if !meta.is_dir() => Err("not a directory".to_string()),
        Ok(_) => Ok(()),
    }
}

/// A listed path as a relative path inside the snapshot. A manifest is data from disk:
/// it must not make us read outside the snapshot.
fn inside(listed: &str) -> std::result::Result<&Path, String> {
    let relative = Path::new(listed);
    if listed.is_empty() || !relative.components().all(|part| matches!(part, Component::Normal(_)))
    {
        return Err("path is not inside the snapshot".to_string());
    }
    Ok(relative)
}

/// Compares one listed file's hash with the disk (after [`check_entry`] passed).
fn check_hash(snapshot_dir: &Path, entry: &FileEntry) -> std::result::Result<(), String> {
    let (_, hash) =
        hash_file(&snapshot_dir.join(&entry.path)).map_err(|e| e.message().to_string())?;
    if hash != entry.hash {
        return Err(format!("{HASH_ALGORITHM} {hash}, expected {}", entry.hash));
    }
    Ok(())
}

/// Size and XXH3-128 (32 lowercase hex digits) of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let file =
        File::open(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    hash_from_start(&file, path)
}

/// Size and XXH3-128 of what `file` reads from its current offset on.
fn hash_from_start(mut file: &File, shown: &Path) -> Result<(u64, String)> {
    let failed = |e| Error::io(format!("cannot read {}", shown.display()), e);
    let mut hasher = Xxh3::new();
    let mut buffer = vec![0u8; HASH_BUFFER_SIZE];
    let mut size = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok((size, format!("{:032x}", hasher.digest128())))
}

/// Files from this size on are hashed through a mapping: no copy out of the page cache.
const MAPPED_HASH_MIN: u64 = 1 << 20;
/// A file is mapped this much at a time, with its page table entries made at once.
/// (A second thread making half of them measured faster, but a checkpoint may only start
/// the threads whose stacks `opal_init` reserved: README, "Mappings".)
const MAPPED_HASH_WINDOW: u64 = 64 << 20;

/// [`hash_file`] of a file we hold open (not read from yet) and nobody else writes, the publishing process's
/// own snapshot: a large one is hashed where it lies in the page cache instead of being
/// copied out first (about twice as fast on tmpfs, where nothing else costs time). A
/// file cut shorter while mapped would raise SIGBUS, hence only for such files.
pub fn hash_open_file(file: &File, shown: &Path) -> Result<(u64, String)> {
    let failed = |e| Error::io(format!("cannot read {}", shown.display()), e);
    let size = file.metadata().map_err(failed)?.len();
    if size < MAPPED_HASH_MIN {
        return hash_from_start(file, shown);
    }
    let mut hasher = Xxh3::new();
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(MAPPED_HASH_WINDOW) as usize;
        // SAFETY: a fresh read-only shared mapping of `len` bytes of the open file, all
        // below its size; unmapped below before anything else maps there.
        let window = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if window == libc::MAP_FAILED {
            return Err(failed(io::Error::last_os_error()));
        }
        // SAFETY: the mapping is readable for `len` bytes while it lives.
        hasher.update(unsafe { std::slice::from_raw_parts(window.cast::<u8>(), len) });
        // SAFETY: our mapping, no longer borrowed.
        unsafe { libc::munmap(window, len) };
        offset += len as u64;
    }
    Ok((size, format!("{:032x}", hasher.digest128())))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
fn rfc3339_utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        unix_ms % 1000
    )
}

/// Gregorian (year, month, day) of a day count since 1970-01-01, by Howard Hinnant's
/// `civil_from_days` algorithm (eras of 400 years starting on March 1st).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::test_support::TempDir;
    use std::os::unix::ffi::OsStrExt;

    /// A snapshot directory with metadata, a payload file and a manifest of both.
    fn snapshot(payload: &[u8]) -> TempDir {
        let dir = TempDir::new();
        fs::write(dir.path().join(METADATA_FILE), "# PID: 1\n# OPAL CRS Component: self\n")
            .unwrap();
        fs::create_dir(dir.path().join("images")).unwrap();
        fs::write(dir.path().join("images/pages.img"), payload).unwrap();
        let files = [METADATA_FILE, "images/pages.img"]
            .iter()
            .map(|rel| {
                let (size, hash) = hash_file(&dir.path().join(rel)).unwrap();
                FileEntry::new(rel.to_string(), size, hash)
            })
            .collect();
        Manifest::new("self", 1, "node1", files, vec![], vec![]).write_to(dir.path()).unwrap();
        dir
    }

    fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(MANIFEST_FILE);
        let mut value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut value);
        fs::write(path, value.to_string()).unwrap();
    }

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn hash_file_streams_the_same_hash_as_one_shot() {
        let dir = TempDir::new();
        let data: Vec<u8> =
            (0..HASH_BUFFER_SIZE * 2 + 12_345).map(|i| (i * 31 % 251) as u8).collect();
        let path = dir.path().join("big");
        fs::write(&path, &data).unwrap();
        let expected = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&data));
        assert_eq!(hash_file(&path).unwrap(), (data.len() as u64, expected));
        fs::write(&path, b"").unwrap();
        assert_eq!(hash_file(&path).unwrap(), (0, "99aa06d3014798d86001c324468d497f".to_string()));
    }

    #[test]
    fn an_open_file_hashes_as_hash_file_does_mapped_or_not() {
        let dir = TempDir::new();
        let path = dir.path().join("f");
        let window = MAPPED_HASH_WINDOW as usize;
        for len in
            [0, 5, MAPPED_HASH_MIN as usize - 1, MAPPED_HASH_MIN as usize, window, window + 4097]
        {
            let data: Vec<u8> = (0..len).map(|i| (i * 131 % 253) as u8).collect();
            fs::write(&path, &data).unwrap();
            let expected = (len as u64, format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&data)));
            let file = File::open(&path).unwrap();
            assert_eq!(hash_open_file(&file, &path).unwrap(), expected, "{len} bytes");
        }
    }

    #[test]
    fn manifest_json_has_the_documented_shape() {
        let files = vec![FileEntry::new("a".into(), 3, "00ff".into())];
        let identity = vec![IdentityEntry { path: "/usr/bin/x".into(), size: 9, build_id: None }];
        let manifest = Manifest::new("criu", 42, "node1", files, vec![], identity);
        let value: serde_json::Value = serde_json::to_value(&manifest).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let expected = [
            "component",
            "created",
            "created_unix_ms",
            "files",
            "format",
            "host",
            "identity",
            "library_version",
            "pid",
        ];
        assert_eq!(keys, expected);
        assert_eq!(value["format"], 1);
        assert_eq!(value["library_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            value["files"][0],
            serde_json::json!({"path": "a", "size": 3, "hash": "00ff", "algorithm": "xxh3-128"})
        );
        assert_eq!(value["identity"][0]["build_id"], serde_json::Value::Null);
        assert_eq!(value["created"], rfc3339_utc(manifest.created_unix_ms));
        assert_eq!(
            Manifest::from_json(&serde_json::to_string(&manifest).unwrap()).unwrap(),
            manifest
        );
    }

    #[test]
    fn from_json_checks_the_format_version() {
        let err = Manifest::from_json(r#"{"format": 2, "anything": true}"#).unwrap_err();
        assert_eq!(err.message(), "manifest format 2 is newer than this library supports (1)");
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_SUPPORTED);
        for text in [r#"{"files": []}"#, r#"{"format": 0}"#, r#"{"format": "1"}"#] {
            let err = Manifest::from_json(text).unwrap_err();
            assert!(err.message().contains("no format version"), "{text}: {err}");
        }
        assert!(Manifest::from_json(r#"{"format": 1}"#)
            .unwrap_err()
            .message()
            .contains("missing field"));
        assert!(Manifest::from_json("not json")
            .unwrap_err()
            .message()
            .starts_with("unreadable manifest"));
    }

    #[test]
    fn verify_accepts_an_intact_snapshot() {
        let dir = snapshot(b"payload bytes");
        assert_eq!(verify(dir.path()), Verdict::Good);
        assert_eq!(Manifest::read(dir.path()).unwrap().files.len(), 2);
    }

    #[test]
    fn verify_detects_a_flipped_byte() {
        let dir = snapshot(b"payload bytes");
        fs::write(dir.path().join("images/pages.img"), b"payload bytez").unwrap();
        match verify(dir.path()) {
            Verdict::Corrupt { file, reason } => {
                assert_eq!(file, "images/pages.img");
                assert!(reason.starts_with("xxh3-128 "), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Cuts the test snapshot's page image down to 4 bytes.
    fn truncate_pages(dir: &Path) {
        File::options().write(true).open(dir.join("images/pages.img")).unwrap().set_len(4).unwrap();
    }

    #[test]
    fn verify_detects_a_truncated_file() {
        let dir = snapshot(b"payload bytes");
        truncate_pages(dir.path());
        let verdict = verify(dir.path());
        assert_eq!(
            verdict,
            Verdict::Corrupt {
                file: "images/pages.img".into(),
                reason: "size 4, expected 13".into()
            }
        );
        assert!(!verdict.is_usable());
    }

    #[test]
    fn verify_detects_a_deleted_file() {
        let dir = snapshot(b"payload bytes");
        fs::remove_file(dir.path().join(METADATA_FILE)).unwrap();
        assert_eq!(
            verify(dir.path()),
            Verdict::Corrupt { file: METADATA_FILE.into(), reason: "missing".into() }
        );
    }

    #[test]
    fn verify_reports_a_future_manifest_format_as_corrupt() {
        let dir = snapshot(b"x");
        rewrite_manifest(dir.path(), |value| value["format"] = 2.into());
        assert_eq!(
            verify(dir.path()),
            Verdict::Corrupt {
                file: MANIFEST_FILE.into(),
                reason: "manifest format 2 is newer than this library supports (1)".into()
            }
        );
    }

    #[test]
    fn verify_refuses_paths_outside_the_snapshot_and_unknown_algorithms() {
        let dir = snapshot(b"x");
        rewrite_manifest(dir.path(), |value| value["files"][1]["path"] = "../escape".into());
        assert_eq!(
            verify(dir.path()),
            Verdict::Corrupt {
                file: "../escape".into(),
                reason: "path is not inside the snapshot".into()
            }
        );
        rewrite_manifest(dir.path(), |value| {
            value["files"][1]["path"] = "images/pages.img".into();
            value["files"][1]["algorithm"] = "md5".into();
        });
        assert!(
            matches!(verify(dir.path()), Verdict::Corrupt { reason, .. } if reason.contains("\"md5\""))
        );
    }

    /// `<tempdir>/<seq>`: where a series keeps its numbered snapshot `seq`.
    fn numbered(base: &TempDir, seq: u64) -> std::path::PathBuf {
        let dir = base.path().join(seq.to_string());
        fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_numbered_snapshot_without_a_manifest_is_corrupt_not_legacy() {
        let base = TempDir::new();
        let dir = numbered(&base, 3);
        fs::write(dir.join(METADATA_FILE), "# PID: 1\n# OPAL CRS Component: self\n").unwrap();
        fs::write(dir.join("state"), b"42").unwrap();
        let verdict = verify(&dir);
        assert_eq!(
            verdict,
            Verdict::Corrupt { file: MANIFEST_FILE.into(), reason: "missing".into() }
        );
        assert_eq!(verdict.to_string(), "corrupt: opalcrs_manifest.json: missing");
        assert_eq!(verify_sizes(&dir), verdict);
        // Also when addressed as `<dir>/.`, and when nothing at all was written.
        assert_eq!(verify(&dir.join(".")), verdict);
        let empty = numbered(&base, 4);
        assert!(matches!(verify(&empty), Verdict::Incomplete { .. }), "{:?}", verify(&empty));
    }

    #[test]
    fn anything_the_manifest_does_not_list_makes_a_snapshot_corrupt() {
        type Add = fn(&Path);
        let extras: [(&str, Add); 6] = [
            ("extra.img", |dir| fs::write(dir.join("extra.img"), b"x").unwrap()),
            ("images/extra.img", |dir| fs::write(dir.join("images/extra.img"), b"").unwrap()),
            ("link", |dir| {
                std::os::unix::fs::symlink("images/pages.img", dir.join("link")).unwrap()
            }),
            ("fifo", |dir| {
                let path = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
                // SAFETY: mkfifo with a valid C string.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            }),
            ("empty", |dir| fs::create_dir(dir.join("empty")).unwrap()),
            ("restore-12.log.old", |dir| fs::write(dir.join("restore-12.log.old"), b"").unwrap()),
        ];
        for (name, add) in extras {
            let dir = snapshot(b"payload bytes");
            add(dir.path());
            let expected =
                Verdict::Corrupt { file: name.into(), reason: "not listed in the manifest".into() };
            assert_eq!(verify(dir.path()), expected, "{name}");
            assert_eq!(verify_sizes(dir.path()), expected, "{name}");
        }
        // A name that is not UTF-8, even one that reads like a listed file's.
        let dir = snapshot(b"payload bytes");
        let listed = "images/pages\u{FFFD}.img";
        fs::write(dir.path().join(listed), b"").unwrap();
        rewrite_manifest(dir.path(), |value| {
            let entry = serde_json::json!({"path": listed, "size": 0, "hash": "99aa06d3014798d86001c324468d497f", "algorithm": HASH_ALGORITHM});
            value["files"].as_array_mut().unwrap().push(entry);
        });
        assert_eq!(verify(dir.path()), Verdict::Good);
        let raw = std::ffi::OsStr::from_bytes(b"pages\xff.img");
        fs::write(dir.path().join("images").join(raw), b"").unwrap();
        assert_eq!(
            verify(dir.path()),
            Verdict::Corrupt { file: listed.into(), reason: "not listed in the manifest".into() }
        );
        // What a restore itself leaves in the snapshot it restored is not part of it.
        let dir = snapshot(b"payload bytes");
        fs::write(dir.path().join("stats-restore"), b"s").unwrap();
        fs::write(dir.path().join("restore-4242.log"), b"log").unwrap();
        assert_eq!(verify(dir.path()), Verdict::Good);
        // Nor what it leaves in a snapshot nested in it (a criu job's node image in its
        // global snapshot: a directory whose own manifest is listed), and only there.
        let dir = snapshot(b"payload bytes");
        let nested = dir.path().join("images/node");
        fs::create_dir_all(&nested).unwrap();
        fs::write(nested.join(MANIFEST_FILE), b"{}").unwrap();
        let (size, hash) = hash_file(&nested.join(MANIFEST_FILE)).unwrap();
        rewrite_manifest(dir.path(), |value| {
            let path = format!("images/node/{MANIFEST_FILE}");
            let entry = serde_json::json!({"path": path, "size": size, "hash": hash, "algorithm": HASH_ALGORITHM});
            value["files"].as_array_mut().unwrap().push(entry);
        });
        fs::write(nested.join("stats-restore"), b"s").unwrap();
        fs::write(nested.join("restore-4242.log"), b"log").unwrap();
        assert_eq!(verify(dir.path()), Verdict::Good);
        fs::write(dir.path().join("images/stats-restore"), b"s").unwrap();
        assert_eq!(
            verify(dir.path()),
            Verdict::Corrupt {
                file: "images/stats-restore".into(),
                reason: "not listed in the manifest".into()
            }
        );
    }

    #[test]
    fn verify_sizes_checks_presence_and_size_but_reads_nothing() {
        let dir = snapshot(b"payload bytes");
        fs::write(dir.path().join("images/pages.img"), b"payload bytez").unwrap();
        assert_eq!(verify_sizes(dir.path()), Verdict::Good);
        assert!(matches!(verify(dir.path()), Verdict::Corrupt { .. }));
        truncate_pages(dir.path());
        let truncated = Verdict::Corrupt {
            file: "images/pages.img".into(),
            reason: "size 4, expected 13".into(),
        };
        assert_eq!(verify_sizes(dir.path()), truncated);
        fs::remove_file(dir.path().join("images/pages.img")).unwrap();
        assert_eq!(
            verify_sizes(dir.path()),
            Verdict::Corrupt { file: "images/pages.img".into(), reason: "missing".into() }
        );
    }

    #[test]
    fn verify_tells_legacy_from_incomplete() {
        let dir = TempDir::new();
        assert!(matches!(verify(dir.path()), Verdict::Incomplete { .. }));
        fs::write(dir.path().join(METADATA_FILE), "# PID: 1\n").unwrap();
        assert_eq!(verify(dir.path()), Verdict::Legacy);
        assert!(Verdict::Legacy.is_usable());

        let dir = snapshot(b"x");
        rewrite_manifest(dir.path(), |value| {
            value["files"].as_array_mut().unwrap().remove(0);
        });
        fs::remove_file(dir.path().join(METADATA_FILE)).unwrap();
        assert_eq!(
            verify(dir.path()),
            Verdict::Incomplete { reason: format!("no {METADATA_FILE}") }
        );

        fs::write(dir.path().join(MANIFEST_FILE), "{").unwrap();
        assert!(
            matches!(verify(dir.path()), Verdict::Corrupt { file, .. } if file == MANIFEST_FILE)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn file_entry() -> impl Strategy<Value = FileEntry> {
            (
                any::<String>(),
                any::<u64>(),
                "[0-9a-f]{0,32}",
                prop_oneof![Just(HASH_ALGORITHM.to_string()), any::<String>()],
            )
                .prop_map(|(path, size, hash, algorithm)| FileEntry {
                    path,
                    size,
                    hash,
                    algorithm,
                })
        }

        fn identity_entry() -> impl Strategy<Value = IdentityEntry> {
            (any::<String>(), any::<u64>(), prop::option::of(any::<String>()))
                .prop_map(|(path, size, build_id)| IdentityEntry { path, size, build_id })
        }

        fn manifest() -> impl Strategy<Value = Manifest> {
            (
                (any::<String>(), any::<String>(), any::<i32>(), any::<String>()),
                (any::<String>(), any::<u64>()),
                prop::collection::vec(file_entry(), 0..6),
                prop::collection::vec("[a-z]{1,8}(/[a-z]{1,8}){0,2}", 0..3),
                prop::collection::vec(identity_entry(), 0..3),
            )
                .prop_map(
                    |(
                        (library_version, component, pid, host),
                        (created, created_unix_ms),
                        files,
                        dirs,
                        identity,
                    )| {
                        Manifest {
                            format: MANIFEST_FORMAT,
                            library_version,
                            component,
                            pid,
                            host,
                            created,
                            created_unix_ms,
                            files,
                            dirs,
                            identity,
                        }
                    },
                )
        }

        /// A valid manifest's text with bytes replaced, removed or inserted.
        fn damaged_text() -> impl Strategy<Value = String> {
            (
                manifest(),
                prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..6),
            )
                .prop_map(|(manifest, edits)| {
                    let mut chars: Vec<char> =
                        serde_json::to_string(&manifest).unwrap().chars().collect();
                    for (at, kind, c) in edits {
                        let i = at.index(chars.len() + 1);
                        match kind {
                            0 if i < chars.len() => chars[i] = c,
                            1 if i < chars.len() => {
                                chars.remove(i);
                            }
                            _ => chars.insert(i, c),
                        }
                    }
                    chars.into_iter().collect()
                })
        }

        /// JSON of roughly the manifest's shape with values of any type.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                let key = prop_oneof![
                    Just("format".to_string()),
                    Just("files".to_string()),
                    Just("path".to_string()),
                    Just("size".to_string()),
                    Just("identity".to_string()),
                    any::<String>(),
                ];
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(key, inner, 0..6)
                        .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_text_never_panics(text in any::<String>()) {
                let _ = Manifest::from_json(&text);
            }

            #[test]
            fn damaged_manifests_never_panic(text in damaged_text()) {
                if let Ok(manifest) = Manifest::from_json(&text) {
                    prop_assert_eq!(manifest.format, MANIFEST_FORMAT);
                }
            }

            #[test]
            fn any_json_never_panics(mut value in json_value(), format in prop_oneof![Just(None), (0u64..4).prop_map(Some)]) {
                if let (Some(format), Some(object)) = (format, value.as_object_mut()) {
                    object.insert("format".into(), format.into());
                }
                let _ = Manifest::from_json(&value.to_string());
            }

            #[test]
            fn json_round_trips(manifest in manifest()) {
                let text = serde_json::to_string_pretty(&manifest).unwrap();
                prop_assert_eq!(Manifest::from_json(&text).unwrap(), manifest);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            #[test]
            fn written_manifests_read_back(manifest in manifest()) {
                let dir = TempDir::new();
                manifest.write_to(dir.path()).unwrap();
                prop_assert_eq!(Manifest::read(dir.path()).unwrap(), manifest);
            }

            /// Whatever a manifest lists, verify() does not panic, reports a listed path
            /// that leaves the snapshot as such, and calls nothing good that was not
            /// checked.
            #[test]
            fn verify_never_panics_on_any_manifest(
                files in prop::collection::vec(
                    (prop_oneof![
                        Just("".to_string()),
                        Just("..".to_string()),
                        Just("../x".to_string()),
                        Just("/etc/passwd".to_string()),
                        Just("a/./b".to_string()),
                        Just(METADATA_FILE.to_string()),
                        Just("payload".to_string()),
                        "[a-z./]{1,8}",
                        any::<String>(),
                    ], any::<u64>(), "[0-9a-f]{0,32}", prop_oneof![Just(HASH_ALGORITHM.to_string()), any::<String>()]),
                    0..5,
                ),
            ) {
                let dir = TempDir::new();
                fs::write(dir.path().join(METADATA_FILE), "# PID: 1\n").unwrap();
                fs::write(dir.path().join("payload"), b"data").unwrap();
                let files: Vec<FileEntry> = files
                    .into_iter()
                    .map(|(path, size, hash, algorithm)| FileEntry { path, size, hash, algorithm })
                    .collect();
                Manifest::new("self", 1, "node1", files.clone(), vec![], vec![]).write_to(dir.path()).unwrap();
                let verdict = verify(dir.path());
                let escaping = files.iter().position(|f| {
                    f.path.is_empty() || !Path::new(&f.path).components().all(|c| matches!(c, Component::Normal(_)))
                });
                match escaping {
                    // Entries before it may already fail; none after it is looked at.
                    Some(i) => prop_assert!(matches!(&verdict, Verdict::Corrupt { .. }), "{:?} {:?}", files[i], verdict),
                    // The two files on disk are never both listed with their hashes here.
                    None => prop_assert!(matches!(&verdict, Verdict::Corrupt { .. }), "{:?}", verdict),
                }
            }
        }
    }
}

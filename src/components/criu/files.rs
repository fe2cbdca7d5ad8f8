//! The regular files a dumped tree has open, recorded at the checkpoint and brought
//! back to that state before a restore.
//!
//! CRIU records every open regular file's size and offset (`files.img`) and refuses to
//! restore one whose size changed, except a file open only `O_WRONLY|O_APPEND`. A job's
//! output file goes on growing after the checkpoint until the job is killed, so that
//! check alone would block most restores. We keep, next to the images, the path,
//! device and inode, size and offsets of each file; before CRIU starts, a file that only
//! grew is cut back to its size at the checkpoint (the restored program writes the rest
//! again), an append-only one keeps what was added, and one that shrank, was replaced or
//! is missing is refused with its name. CRIU then reopens every file itself, at the
//! recorded offset.

use super::proto::{Reader, Value};
use super::restore::image_entries;
use crate::codes;
use crate::error::{Error, Result};
use crate::owner::{c_path, Owner, StepError};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The record in a snapshot, listed (and so checked) by its manifest like the images.
pub const OPEN_FILES: &str = "open-files.json";

/// Second words of `files.img`, `fdinfo-N.img` and `remap-fpath.img`
/// (criu/include/magic.h).
const FILES_MAGIC: u32 = 0x5630_3138;
const FDINFO_MAGIC: u32 = 0x5621_3732;
const REMAP_FPATH_MAGIC: u32 = 0x5913_3954;
/// `file_entry` (images/fdinfo.proto): its type, and the regular file in it.
const FILE_TYPE: u32 = 1;
const FILE_REG: u32 = 3;
const FD_TYPE_REG: u64 = 1;
/// `reg_file_entry` (images/regfile.proto).
const REG_ID: u32 = 1;
const REG_FLAGS: u32 = 2;
const REG_POS: u32 = 3;
const REG_NAME: u32 = 6;
const REG_SIZE: u32 = 8;
const REG_EXT: u32 = 9;
/// `fdinfo_entry.id`: the file a descriptor refers to.
const FDINFO_ID: u32 = 1;
/// `remap_file_path_entry.orig_id`: a file CRIU restores from a copy or link of its own.
const REMAP_ORIG_ID: u32 = 1;

/// One regular file the tree had open at the checkpoint (any number of descriptors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// Its size when CRIU dumped the tree.
    pub size: u64,
    /// The offset of each open file description.
    pub offsets: Vec<u64>,
    /// Every description is `O_WRONLY|O_APPEND` (a log written with `>>`): CRIU lets
    /// such a file grow, and so do we.
    pub append_only: bool,
}

/// One regular file entry of `files.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RegEntry {
    id: u32,
    flags: u32,
    pos: u64,
    name: String,
    size: Option<u64>,
    external: bool,
}

/// The regular files in `files.img`.
fn parse_files(bytes: &[u8]) -> Result<Vec<RegEntry>> {
    let mut found = Vec::new();
    for entry in image_entries(bytes, FILES_MAGIC, "files")? {
        let (mut kind, mut reg) = (None, None);
        let mut reader = Reader::new(entry);
        while let Some((number, value)) = reader.next_field()? {
            match (number, value) {
                (FILE_TYPE, value) => kind = value.as_u64(),
                (FILE_REG, Value::Bytes(inner)) => reg = Some(inner),
                _ => {}
            }
        }
        let (Some(FD_TYPE_REG), Some(reg)) = (kind, reg) else { continue };
        let mut parsed =
            RegEntry { id: 0, flags: 0, pos: 0, name: String::new(), size: None, external: false };
        let mut reader = Reader::new(reg);
        while let Some((number, value)) = reader.next_field()? {
            match (number, value) {
                (REG_ID, value) => parsed.id = value.as_u64().unwrap_or_default() as u32,
                (REG_FLAGS, value) => parsed.flags = value.as_u64().unwrap_or_default() as u32,
                (REG_POS, value) => parsed.pos = value.as_u64().unwrap_or_default(),
                (REG_NAME, Value::Bytes(name)) => {
                    parsed.name = String::from_utf8_lossy(name).into_owned()
                }
                (REG_SIZE, value) => parsed.size = value.as_u64(),
                (REG_EXT, value) => parsed.external = value.as_u64() == Some(1),
                _ => {}
            }
        }
        found.push(parsed);
    }
    Ok(found)
}

/// The values of the integer field `field` in every entry of an image: the file ids
/// of an `fdinfo-N.img` (files open through a descriptor), the ids of the files of a
/// `remap-fpath.img` (unlinked or hidden ones CRIU restores from its own copy or link).
fn parse_ids(bytes: &[u8], magic: u32, field: u32) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in image_entries(bytes, magic, "files")? {
        let mut reader = Reader::new(entry);
        while let Some((number, value)) = reader.next_field()? {
            if number == field {
                ids.extend(value.as_u64().map(|id| id as u32));
            }
        }
    }
    Ok(ids)
}

/// Groups the entries CRIU checks by size that a descriptor refers to (`open`) into
/// one record per path; `identify` gives a path's device and inode now (None: not a
/// regular file, left to CRIU). Files only mapped (the executable, libraries) are left
/// to CRIU and the identity check.
fn group(
    entries: &[RegEntry],
    open: &[u32],
    remapped: &[u32],
    identify: impl Fn(&str) -> Option<(u64, u64)>,
) -> Vec<OpenFile> {
    let mut files: Vec<OpenFile> = Vec::new();
    for entry in entries {
        let Some(size) = entry.size else { continue };
        if entry.external
            || !open.contains(&entry.id)
            || remapped.contains(&entry.id)
            || !entry.name.starts_with('/')
        {
            continue;
        }
        let append_only = entry.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32
            && entry.flags & libc::O_APPEND as u32 != 0;
        if let Some(file) = files.iter_mut().find(|file| file.path == entry.name) {
            file.offsets.push(entry.pos);
            file.append_only &= append_only;
            continue;
        }
        let Some((dev, ino)) = identify(&entry.name) else { continue };
        files.push(OpenFile {
            path: entry.name.clone(),
            dev,
            ino,
            size,
            offsets: vec![entry.pos],
            append_only,
        });
    }
    files
}

/// Records the open regular files of the tree just dumped into `images_dir`, from
/// CRIU's own images (the sizes and offsets it will check and restore), with each
/// file's device and inode.
pub fn record(images_dir: &Path) -> Result<()> {
    let read = |name: &str| {
        let path = images_dir.join(name);
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
    };
    let entries = parse_files(&read("files.img")?)
        .map_err(|e| e.context(images_dir.join("files.img").display()))?;
    let ids_in = |name: &str, magic: u32, field: u32| {
        parse_ids(&read(name)?, magic, field)
            .map_err(|e| e.context(images_dir.join(name).display()))
    };
    let mut open = Vec::new();
    let listing = std::fs::read_dir(images_dir)
        .map_err(|e| Error::io(format!("listing {}", images_dir.display()), e))?;
    for name in listing.flatten().filter_map(|entry| entry.file_name().into_string().ok()) {
        if name.starts_with("fdinfo-") && name.ends_with(".img") {
            open.extend(ids_in(&name, FDINFO_MAGIC, FDINFO_ID)?);
        }
    }
    let remapped = match std::fs::metadata(images_dir.join("remap-fpath.img")) {
        Ok(_) => ids_in("remap-fpath.img", REMAP_FPATH_MAGIC, REMAP_ORIG_ID)?,
        Err(_) => Vec::new(),
    };
    let files = group(&entries, &open, &remapped, identity);
    let path = images_dir.join(OPEN_FILES);
    let text = serde_json::to_string_pretty(&files).expect("plain data serializes");
    std::fs::write(&path, text + "\n")
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Device and inode of the regular file at `path`, if its size and contents are worth
/// checking: not on a file system the kernel makes up as it is read (/proc, /sys),
/// whose files have no size, and name PIDs that exist only once CRIU has restored them.
fn identity(path: &str) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path).ok().filter(|meta| meta.is_file())?;
    let c_path = CString::new(path).ok()?;
    // SAFETY: all-zero is a valid statfs for statfs to fill; the path is NUL-terminated.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    let made_up = [libc::PROC_SUPER_MAGIC, libc::SYSFS_MAGIC];
    (!made_up.contains(&(fs.f_type as _))).then_some((meta.dev(), meta.ino()))
}

/// The record of snapshot `dir`, when its manifest lists it with the right hash;
/// nothing for a snapshot taken before it was kept. Err: why the snapshot is damaged.
pub fn read_checked(dir: &Path) -> std::result::Result<Vec<OpenFile>, String> {
    let Ok(manifest) = crate::snapshot::Manifest::read(dir) else { return Ok(Vec::new()) };
    let Some(listed) = manifest.files.iter().find(|entry| entry.path == OPEN_FILES) else {
        return Ok(Vec::new());
    };
    let corrupt = |why: String| format!("corrupt: {OPEN_FILES}: {why}");
    let path = dir.join(OPEN_FILES);
    let (_, hash) =
        crate::snapshot::hash_file(&path).map_err(|e| corrupt(e.message().to_string()))?;
    if hash != listed.hash {
        let algorithm = crate::snapshot::HASH_ALGORITHM;
        return Err(corrupt(format!("{algorithm} {hash}, expected {}", listed.hash)));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))
}

/// A file as it is now, as far as the restore cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now {
    Missing,
    Unreadable(String),
    NotRegular,
    File { dev: u64, ino: u64, size: u64 },
}

impl Now {
    fn of(path: &str) -> Now {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Now::Missing,
            Err(e) => Now::Unreadable(e.to_string()),
            Ok(meta) if !meta.is_file() => Now::NotRegular,
            Ok(meta) => Now::File { dev: meta.dev(), ino: meta.ino(), size: meta.len() },
        }
    }
}

/// What to do with one recorded file: Ok(None) leave it, Ok(Some(size now)) cut it
/// back to its recorded size, Err why it cannot be restored.
fn judge(file: &OpenFile, now: Now, cut_grown: bool) -> std::result::Result<Option<u64>, String> {
    let path = &file.path;
    match now {
        Now::Missing => Err(format!(
            "{path} is missing (the checkpointed process had it open, {} bytes)",
            file.size
        )),
        Now::Unreadable(why) => Err(format!("{path} cannot be examined: {why}")),
        Now::NotRegular => Err(format!("{path} is no longer a regular file")),
        Now::File { dev, ino, .. } if (dev, ino) != (file.dev, file.ino) => Err(format!(
            "{path} was replaced since the checkpoint (inode {} then, {ino} now)",
            file.ino
        )),
        Now::File { size, .. } if size < file.size => Err(format!(
            "{path} shrank since the checkpoint ({} bytes then, {size} now)",
            file.size
        )),
        Now::File { size, .. } if size == file.size || file.append_only => Ok(None),
        Now::File { size, .. } if cut_grown => Ok(Some(size)),
        Now::File { size, .. } => Err(format!(
            "{path} grew since the checkpoint ({} bytes then, {size} now), and \
             crs_criu_truncate_grown=0 keeps it from being cut back",
            file.size
        )),
    }
}

/// Brings the files snapshot `dir` recorded back to their size at the checkpoint,
/// acting as `owner` (the user the restore runs as), before CRIU reopens them: checks
/// every file first, so that a refusal changes nothing, then cuts back the grown ones
/// and says so on stderr. Err names every file that cannot be restored.
pub fn prepare(dir: &Path, files: &[OpenFile], owner: &Owner, cut_grown: bool) -> Result<()> {
    let mut problems = Vec::new();
    let mut cuts: Vec<(&OpenFile, u64)> = Vec::new();
    for file in files {
        match judge(file, Now::of(&file.path), cut_grown) {
            Ok(Some(now)) => cuts.push((file, now)),
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(Error::new(
            codes::OPAL_ERR_NOT_AVAILABLE,
            format!("cannot restore {}: {}", dir.display(), problems.join("; ")),
        ));
    }
    let paths = cuts
        .iter()
        .map(|(file, _)| c_path(Path::new(&file.path)))
        .collect::<Result<Vec<CString>>>()?;
    owner.steps_as_owner(cuts.len(), |index| cut_back(&paths[index], cuts[index].0)).map_err(
        |(index, failure)| match (index.and_then(|index| cuts.get(index)), failure) {
            (Some((file, now)), StepError::Os(e)) => Error::new(
                codes::OPAL_ERR_NOT_AVAILABLE,
                format!(
                    "cannot restore {}: cannot cut {} back from {now} to {} bytes: {}",
                    dir.display(),
                    file.path,
                    file.size,
                    if e.raw_os_error() == Some(libc::ESTALE) {
                        "it changed meanwhile".to_string()
                    } else {
                        e.to_string()
                    }
                ),
            ),
            (_, failure) => failure.into_error(owner.uid),
        },
    )?;
    for (file, now) in cuts {
        eprintln!(
            "opal-restart: cut {} back from {now} to {} bytes (written after the checkpoint)",
            file.path, file.size
        );
    }
    Ok(())
}

/// Truncates `file` at `path` to its recorded size, if it is still the same file and
/// not smaller; never follows a link. System calls only (it may run in a forked child).
fn cut_back(path: &CString, file: &OpenFile) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is ours and closed below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid stat for fstat to fill; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let result = if unsafe { libc::fstat(fd, &mut st) } != 0 {
        Err(io::Error::last_os_error())
    } else if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || (st.st_dev as u64, st.st_ino as u64) != (file.dev, file.ino)
        || (st.st_size as u64) < file.size
    {
        Err(io::Error::from_raw_os_error(libc::ESTALE))
    } else if unsafe { libc::ftruncate(fd, file.size as libc::off_t) } != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&super::super::restore::IMG_COMMON_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&magic.to_le_bytes());
        for entry in entries {
            bytes.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            bytes.extend_from_slice(entry);
        }
        bytes
    }

    fn varint(field: u32, value: u64) -> Vec<u8> {
        let mut bytes = vec![(field << 3) as u8];
        let mut value = value;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                bytes.push(byte);
                return bytes;
            }
            bytes.push(byte | 0x80);
        }
    }

    fn nested(field: u32, inner: &[u8]) -> Vec<u8> {
        let mut bytes = vec![(field << 3 | 2) as u8, inner.len() as u8];
        bytes.extend_from_slice(inner);
        bytes
    }

    fn reg(id: u32, flags: i32, pos: u64, name: &str, size: u64) -> Vec<u8> {
        let mut inner = varint(REG_ID, u64::from(id));
        inner.extend(varint(REG_FLAGS, flags as u64));
        inner.extend(varint(REG_POS, pos));
        inner.extend(nested(REG_NAME, name.as_bytes()));
        inner.extend(varint(REG_SIZE, size));
        let mut entry = varint(FILE_TYPE, FD_TYPE_REG);
        entry.extend(varint(2, u64::from(id)));
        entry.extend(nested(FILE_REG, &inner));
        entry
    }

    #[test]
    fn files_the_kernel_makes_up_are_not_recorded() {
        assert_eq!(identity("/proc/self/stat"), None);
        assert_eq!(identity("/sys/kernel/mm/transparent_hugepage/enabled"), None);
        let own = std::env::current_exe().unwrap();
        let meta = std::fs::metadata(&own).unwrap();
        assert_eq!(identity(own.to_str().unwrap()), Some((meta.dev(), meta.ino())));
    }

    #[test]
    fn regular_files_are_grouped_by_path_with_their_offsets() {
        let pipe = {
            let mut entry = varint(FILE_TYPE, 2);
            entry.extend(varint(2, 9));
            entry
        };
        let bytes = image(
            FILES_MAGIC,
            &[
                reg(1, libc::O_RDONLY, 4096, "/data/in", 10_000),
                pipe,
                reg(2, libc::O_WRONLY | libc::O_APPEND, 300, "/data/log", 300),
                reg(3, libc::O_WRONLY | libc::O_APPEND, 300, "/data/log", 300),
                reg(4, libc::O_RDWR, 7, "/data/gone", 9),
                reg(5, libc::O_RDONLY, 0, "/dev/null", 0),
                reg(6, libc::O_WRONLY, 50, "/data/out", 50),
                reg(7, libc::O_RDONLY, 0, "/data/out", 50),
                reg(8, libc::O_RDONLY, 0, "/usr/lib/libc.so.6", 2_000_000),
            ],
        );
        let entries = parse_files(&bytes).unwrap();
        assert_eq!(entries.len(), 8);
        let remaps = parse_ids(
            &image(REMAP_FPATH_MAGIC, &[varint(REMAP_ORIG_ID, 4)]),
            REMAP_FPATH_MAGIC,
            REMAP_ORIG_ID,
        )
        .unwrap();
        assert_eq!(remaps, [4]);
        // Entry 8 is only mapped: no descriptor refers to it.
        let fdinfo = |id: u64, fd: u64| {
            [varint(FDINFO_ID, id), varint(2, 0), varint(3, 1), varint(4, fd)].concat()
        };
        let fds = image(FDINFO_MAGIC, &[1, 2, 3, 4, 5, 6, 7].map(|id| fdinfo(id, id + 2)));
        let open = parse_ids(&fds, FDINFO_MAGIC, FDINFO_ID).unwrap();
        assert_eq!(open, [1, 2, 3, 4, 5, 6, 7]);
        let files =
            group(&entries, &open, &remaps, |path| (path != "/dev/null").then_some((8, 77)));
        let summary: Vec<(&str, u64, &[u64], bool)> = files
            .iter()
            .map(|f| (f.path.as_str(), f.size, f.offsets.as_slice(), f.append_only))
            .collect();
        assert_eq!(
            summary,
            [
                ("/data/in", 10_000, &[4096][..], false),
                ("/data/log", 300, &[300, 300][..], true),
                ("/data/out", 50, &[50, 0][..], false),
            ]
        );
        assert!(parse_files(&image(REMAP_FPATH_MAGIC, &[]))
            .unwrap_err()
            .message()
            .contains("wrong magic"));
    }

    #[test]
    fn grown_files_are_cut_append_only_ones_kept_and_other_changes_refused() {
        let file = OpenFile {
            path: "/w/out".into(),
            dev: 1,
            ino: 2,
            size: 100,
            offsets: vec![100],
            append_only: false,
        };
        let now = |ino, size| Now::File { dev: 1, ino, size };
        let denied = judge(&file, Now::Unreadable("Permission denied".into()), true).unwrap_err();
        assert!(denied.contains("/w/out cannot be examined: Permission denied"), "{denied}");
        assert_eq!(judge(&file, now(2, 100), true), Ok(None));
        assert_eq!(judge(&file, now(2, 150), true), Ok(Some(150)));
        let kept = judge(&file, now(2, 150), false).unwrap_err();
        assert!(
            kept.contains("/w/out grew") && kept.contains("crs_criu_truncate_grown=0"),
            "{kept}"
        );
        let log = OpenFile { append_only: true, ..file.clone() };
        assert_eq!(judge(&log, now(2, 150), false), Ok(None));
        assert!(judge(&log, now(2, 50), true).unwrap_err().contains("/w/out shrank"));
        assert!(judge(&file, now(3, 100), true).unwrap_err().contains("/w/out was replaced"));
        assert!(judge(&file, Now::Missing, true).unwrap_err().contains("/w/out is missing"));
        assert!(judge(&file, Now::NotRegular, true).unwrap_err().contains("no longer a regular"));
    }

    #[test]
    fn only_a_refusal_free_set_of_files_is_cut_and_only_the_same_file() {
        let dir = std::env::temp_dir().join(format!("opalcrs-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let record = |name: &str, size: u64| {
            let path = dir.join(name);
            let meta = std::fs::metadata(&path).unwrap();
            OpenFile {
                path: path.display().to_string(),
                dev: meta.dev(),
                ino: meta.ino(),
                size,
                offsets: vec![size],
                append_only: false,
            }
        };
        std::fs::write(dir.join("grown"), "0123456789").unwrap();
        std::fs::write(dir.join("shrunk"), "01").unwrap();
        let (grown, shrunk) = (record("grown", 4), record("shrunk", 5));
        let me = Owner::without_groups(crate::owner::effective_uid(), 0);
        let refused = prepare(&dir, &[grown.clone(), shrunk], &me, true).unwrap_err();
        assert!(refused.message().contains("shrunk shrank"), "{}", refused.message());
        assert_eq!(std::fs::read(dir.join("grown")).unwrap(), b"0123456789");
        prepare(&dir, std::slice::from_ref(&grown), &me, true).unwrap();
        assert_eq!(std::fs::read(dir.join("grown")).unwrap(), b"0123");
        let other = OpenFile { ino: grown.ino + 1, size: 2, ..grown.clone() };
        let path = c_path(Path::new(&other.path)).unwrap();
        assert_eq!(cut_back(&path, &other).unwrap_err().raw_os_error(), Some(libc::ESTALE));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

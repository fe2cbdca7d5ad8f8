//! Whether a criu image can be restored on this node. An image holds the process's
//! memory as it was, with the executable's and libraries' code mapped from their files,
//! and CRIU itself needs the kernel it was dumped on: a requeued job that lands on
//! another node is restored there only when the kernel, the executable and every mapped
//! library are the same. What the image needs is recorded at dump time in
//! `criu-compat.json` (listed, and so checked, by the snapshot's manifest): the kernel
//! (`uname` release, version and machine) and the XXH3-128 of each file the process
//! may read. Before CRIU starts, a restore compares them with this node and refuses,
//! naming what differs.

use crate::codes;
use crate::error::{Error, Result};
use crate::snapshot::{hash_file, IdentityEntry, Manifest, HASH_ALGORITHM};
use serde::{Deserialize, Serialize};
use std::ffi::CStr;
use std::path::Path;

/// The record in a snapshot.
pub(crate) const COMPAT_FILE: &str = "criu-compat.json";

/// The kernel an image was dumped on, as `uname` tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Kernel {
    pub release: String,
    pub version: String,
    pub machine: String,
}

/// A file whose code the image maps, and its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HashedFile {
    pub path: String,
    pub hash: String,
}

/// What a restore needs of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Needs {
    pub kernel: Kernel,
    /// The executable and each mapped library, by [`HASH_ALGORITHM`].
    pub files: Vec<HashedFile>,
}

impl Kernel {
    /// This node's kernel.
    pub(crate) fn running() -> Kernel {
        // SAFETY: utsname is plain data; uname fills it with NUL-terminated fields.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uts is a valid, writable utsname.
        if unsafe { libc::uname(&mut uts) } != 0 {
            return Kernel {
                release: String::new(),
                version: String::new(),
                machine: String::new(),
            };
        }
        // SAFETY: uname NUL-terminates every field of uts, which outlives the borrow.
        let field = |chars: &[libc::c_char]| {
            unsafe { CStr::from_ptr(chars.as_ptr()) }.to_string_lossy().into_owned()
        };
        Kernel {
            release: field(&uts.release),
            version: field(&uts.version),
            machine: field(&uts.machine),
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.release, self.machine, self.version)
    }
}

/// Records what the image in `dir` needs: this kernel and the regular files of
/// `identity` (the executable and mapped libraries), hashed as they are now. A file the
/// process may not read (an execute-only program) is left to the manifest's identity
/// check (size, build-id): CRIU dumps such a process all the same. A device mapped
/// executable (`/dev/zero`) is no file to compare.
pub(crate) fn record(dir: &Path, identity: &[IdentityEntry]) -> Result<()> {
    let files = identity
        .iter()
        .filter(|entry| std::fs::metadata(&entry.path).is_ok_and(|m| m.is_file()))
        .filter_map(|entry| {
            let (_, hash) = hash_file(Path::new(&entry.path)).ok()?;
            Some(HashedFile { path: entry.path.clone(), hash })
        })
        .collect();
    let needs = Needs { kernel: Kernel::running(), files };
    let path = dir.join(COMPAT_FILE);
    let text = serde_json::to_string_pretty(&needs).expect("plain data serializes");
    std::fs::write(&path, text + "\n")
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Refuses to restore the image in `dir` on this node when its kernel, executable or a
/// library differs from what the dump recorded. A snapshot without the record (taken by
/// an older version) is not checked here.
pub(crate) fn check(dir: &Path) -> Result<()> {
    let Some(needs) = read(dir)? else { return Ok(()) };
    let refuse = |what: String| {
        let host = Manifest::read(dir).map(|m| m.host).unwrap_or_default();
        let on = if host.is_empty() { String::new() } else { format!(" on {host}") };
        Error::new(
            codes::OPAL_ERR_NOT_AVAILABLE,
            format!("cannot restore {} here: {what} (it was dumped{on})", dir.display()),
        )
    };
    let kernel = Kernel::running();
    if kernel != needs.kernel {
        return Err(refuse(format!(
            "this node runs kernel {kernel}, the image needs kernel {}",
            needs.kernel
        )));
    }
    for file in &needs.files {
        if !std::fs::metadata(&file.path).map_or(true, |m| m.is_file()) {
            return Err(refuse(format!("{} is not a regular file here", file.path)));
        }
        match hash_file(Path::new(&file.path)) {
            Err(e) => return Err(refuse(format!("{} is not readable here: {}", file.path, e))),
            Ok((_, hash)) if hash != file.hash => {
                return Err(refuse(format!(
                    "{} differs from the file the image maps ({HASH_ALGORITHM} {hash}, the image needs {})",
                    file.path, file.hash
                )))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The record in `dir`, trusted only if the manifest lists it with its present hash
/// (the snapshot check runs beside the restore, not before it).
fn read(dir: &Path) -> Result<Option<Needs>> {
    let Ok(manifest) = Manifest::read(dir) else { return Ok(None) };
    let Some(listed) = manifest.files.iter().find(|entry| entry.path == COMPAT_FILE) else {
        return Ok(None);
    };
    let corrupt = |why: String| {
        Error::new(
            codes::OPAL_ERR_NOT_AVAILABLE,
            format!("cannot restore {}: corrupt: {COMPAT_FILE}: {why}", dir.display()),
        )
    };
    let path = dir.join(COMPAT_FILE);
    let (_, hash) = hash_file(&path).map_err(|e| corrupt(e.message().to_string()))?;
    if hash != listed.hash {
        return Err(corrupt(format!("{HASH_ALGORITHM} {hash}, expected {}", listed.hash)));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_str(&text).map(Some).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::criu::rpc::TempDir;
    use crate::snapshot::FileEntry;

    /// A snapshot directory whose manifest lists its compat record as it is now.
    fn snapshot_with(needs: &Needs) -> TempDir {
        let dir = TempDir::new("criu-compat").unwrap();
        let text = serde_json::to_string_pretty(needs).unwrap();
        std::fs::write(dir.path().join(COMPAT_FILE), text).unwrap();
        list_in_manifest(dir.path());
        dir
    }

    fn list_in_manifest(dir: &Path) {
        let (size, hash) = hash_file(&dir.join(COMPAT_FILE)).unwrap();
        let files = vec![FileEntry::new(COMPAT_FILE.into(), size, hash)];
        Manifest::new("criu", 1, "node-a", files, Vec::new(), Vec::new()).write_to(dir).unwrap();
    }

    /// What a dump of a process running this test binary records.
    fn recorded_here() -> Needs {
        let dir = TempDir::new("criu-compat").unwrap();
        let exe = std::env::current_exe().unwrap();
        record(dir.path(), &[IdentityEntry::of(&exe).unwrap()]).unwrap();
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(COMPAT_FILE)).unwrap())
            .unwrap()
    }

    #[test]
    fn a_file_the_process_may_not_read_and_a_device_are_left_out_and_the_dump_goes_on() {
        let dir = TempDir::new("criu-compat").unwrap();
        let exe = std::env::current_exe().unwrap();
        let gone = IdentityEntry { path: "/nonexistent/exec-only".into(), size: 1, build_id: None };
        // A device mapped executable (zdtm maps00 maps /dev/zero so) has no end to hash.
        let device = IdentityEntry::of(Path::new("/dev/zero")).unwrap();
        record(dir.path(), &[gone, device, IdentityEntry::of(&exe).unwrap()]).unwrap();
        let needs: Needs =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(COMPAT_FILE)).unwrap())
                .unwrap();
        let paths: Vec<&str> = needs.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [exe.to_str().unwrap()]);
    }

    #[test]
    fn an_image_of_this_node_passes() {
        let needs = recorded_here();
        assert_eq!(needs.kernel, Kernel::running());
        assert!(!needs.kernel.release.is_empty());
        assert_eq!(needs.files.len(), 1);
        check(snapshot_with(&needs).path()).unwrap();
    }

    #[test]
    fn another_kernel_is_refused_naming_both_kernels_and_the_dump_host() {
        let mut needs = recorded_here();
        needs.kernel.release = "5.10.0-other".into();
        let err = check(snapshot_with(&needs).path()).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_AVAILABLE);
        let message = err.message();
        assert!(message.contains(&format!("this node runs kernel {}", Kernel::running())));
        assert!(message.contains("the image needs kernel 5.10.0-other"), "{message}");
        assert!(message.contains("(it was dumped on node-a)"), "{message}");
    }

    #[test]
    fn an_executable_with_another_hash_is_refused_by_name() {
        let mut needs = recorded_here();
        needs.files[0].hash = "0".repeat(32);
        let err = check(snapshot_with(&needs).path()).unwrap_err();
        let exe = std::env::current_exe().unwrap();
        assert!(
            err.message()
                .contains(&format!("{} differs from the file the image maps", exe.display())),
            "{}",
            err.message()
        );
        needs.files[0].path = "/nonexistent/lib.so".into();
        let err = check(snapshot_with(&needs).path()).unwrap_err();
        assert!(err.message().contains("/nonexistent/lib.so is not readable here"), "{err}");
        needs.files[0].path = "/dev/zero".into();
        let err = check(snapshot_with(&needs).path()).unwrap_err();
        assert!(err.message().contains("/dev/zero is not a regular file here"), "{err}");
    }

    #[test]
    fn a_record_changed_after_the_manifest_is_corrupt_and_none_is_not_checked() {
        let mut needs = recorded_here();
        let dir = snapshot_with(&needs);
        needs.kernel.release = "5.10.0-other".into();
        std::fs::write(dir.path().join(COMPAT_FILE), serde_json::to_string(&needs).unwrap())
            .unwrap();
        let err = check(dir.path()).unwrap_err();
        assert!(err.message().contains("corrupt: criu-compat.json: xxh3-128"), "{err}");
        std::fs::remove_file(dir.path().join(COMPAT_FILE)).unwrap();
        Manifest::new("criu", 1, "node-a", Vec::new(), Vec::new(), Vec::new())
            .write_to(dir.path())
            .unwrap();
        check(dir.path()).unwrap();
    }
}

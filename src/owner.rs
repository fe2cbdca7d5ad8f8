//! Who a snapshot belongs to, and acting for that user. The one rule (README, "Security
//! model"): acting on a snapshot never gives it more privilege than its owner has. Root
//! runs what a snapshot of another user asks for as that user; anyone else may act only
//! on snapshots of their own.

use crate::codes;
use crate::error::{Error, Result};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Capabilities CRIU may keep when it runs as a user (linux/capability.h).
pub(crate) const CAP_SETPCAP: u32 = 8;
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// A user as a process running for them needs it: ids, supplementary groups, home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// From the password database; None for a uid without an entry.
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

impl Owner {
    /// The user `uid`, from the password database; a uid without an entry gets
    /// `fallback_gid` and no supplementary groups.
    pub fn of_uid(uid: u32, fallback_gid: u32) -> Owner {
        let mut buffer = vec![0u8; 16 * 1024];
        // SAFETY: all-zero is a valid passwd for getpwuid_r to fill.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the buffer and the out-pointers live for the call.
        let rc = unsafe {
            libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found)
        };
        if rc != 0 || found.is_null() {
            return Owner { uid, gid: fallback_gid, groups: Vec::new(), name: None, home: None };
        }
        // SAFETY: getpwuid_r succeeded, so the strings point into `buffer`.
        let (name, home) = unsafe { (CStr::from_ptr(entry.pw_name), CStr::from_ptr(entry.pw_dir)) };
        let groups = group_list(name, entry.pw_gid);
        Owner {
            uid,
            gid: entry.pw_gid,
            groups,
            name: Some(name.to_string_lossy().into_owned()),
            home: Some(PathBuf::from(OsStr::from_bytes(home.to_bytes()))),
        }
    }

    /// `uid` with group `gid` and no supplementary groups.
    pub fn without_groups(uid: u32, gid: u32) -> Owner {
        Owner { uid, gid, groups: Vec::new(), name: None, home: None }
    }

    /// The owner of snapshot `dir`, and of the series that holds it when there is one:
    /// both read without following links (the store never makes links there); a link,
    /// or two owners, is refused.
    pub fn of_snapshot(dir: &Path, series: Option<&Path>) -> Result<Owner> {
        let owned_by = |path: &Path| -> Result<std::fs::Metadata> {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| Error::io(format!("cannot use snapshot {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                return Err(refusal(path, "it is a symbolic link".to_string()));
            }
            Ok(meta)
        };
        let snapshot = owned_by(dir)?;
        if let Some(series) = series {
            let holder = owned_by(series)?;
            if holder.uid() != snapshot.uid() {
                return Err(refusal(
                    dir,
                    format!(
                        "it belongs to uid {} but its series {} to uid {}",
                        snapshot.uid(),
                        series.display(),
                        holder.uid()
                    ),
                ));
            }
        }
        Ok(Owner::of_uid(snapshot.uid(), snapshot.gid()))
    }

    /// Whether acting for this owner means changing user: we are root, it is not.
    pub fn needs_switch(&self) -> bool {
        effective_uid() == 0 && self.uid != 0
    }

    /// Refuses a snapshot of another user unless we are root (who then acts as its owner).
    pub fn check_caller(&self, snapshot: &Path) -> Result<()> {
        let me = effective_uid();
        if me == 0 || me == self.uid {
            return Ok(());
        }
        Err(refusal(
            snapshot,
            format!("it belongs to uid {}; only that user or root may restart it", self.uid),
        ))
    }

    /// Becomes the owner: groups, then gid, then uid (all three of each), and checks that
    /// root cannot be regained. Only system calls, so it may run between fork and exec.
    pub fn become_owner(&self) -> io::Result<()> {
        // SAFETY: plain system calls on values we own.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setresgid(self.gid, self.gid, self.gid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if self.uid != 0 && libc::setresuid(0, 0, 0) == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    }

    /// Becomes the owner like [`become_owner`](Self::become_owner) but keeps
    /// `capabilities` (effective, permitted, inheritable and ambient, so also across
    /// exec) and no other: how CRIU runs in its unprivileged mode for a root tool.
    /// Async-signal-safe (system calls only); Err(errno).
    pub fn become_keeping(&self, capabilities: &[u32]) -> std::result::Result<(), libc::c_int> {
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(libc::EPERM);
        let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(errno()) };
        // SAFETY: plain system calls on this process's own credentials; the structures
        // are laid out as capset(2) expects.
        unsafe {
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
            for &cap in capabilities {
                let word = &mut data[(cap / 32) as usize];
                let bit = 1 << (cap % 32);
                word.effective |= bit;
                word.permitted |= bit;
                word.inheritable |= bit;
            }
            let header = CapHeader { version: VERSION_3, pid: 0 };
            check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
            for &cap in capabilities {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                check(libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0))?;
            }
        }
        Ok(())
    }

    /// `HOME`, `USER` and `LOGNAME` for a program that runs as the owner.
    pub fn environment(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut env = Vec::new();
        if let Some(home) = &self.home {
            env.push(("HOME", home.clone().into_os_string()));
        }
        if let Some(name) = &self.name {
            env.push(("USER", name.into()));
            env.push(("LOGNAME", name.into()));
        }
        env
    }

    /// Creates directories (with their parents, like `mkdir -p`) and files (`O_CREAT`,
    /// existing ones untouched) as the owner: in a child process that has become the
    /// owner when we are root and the owner is not, here otherwise. The child makes
    /// system calls only (the paths are prepared before the fork), so this is safe in
    /// a multi-threaded caller too. The error names the path and the OS error.
    pub fn create_as_owner(&self, dirs: &[PathBuf], files: &[PathBuf]) -> Result<()> {
        let mut steps: Vec<(CString, bool)> = Vec::new();
        for dir in dirs {
            let ancestors: Vec<&Path> =
                dir.ancestors().filter(|a| !a.as_os_str().is_empty()).collect();
            for step in ancestors.into_iter().rev() {
                steps.push((c_path(step)?, true));
            }
        }
        for file in files {
            steps.push((c_path(file)?, false));
        }
        self.steps_as_owner(steps.len(), |index| create_one(&steps[index].0, steps[index].1))
            .map_err(|(index, failure)| match (index.and_then(|index| steps.get(index)), failure) {
                (Some((path, _)), StepError::Os(e)) => create_failed(path, e),
                (_, failure) => failure.into_error(self.uid),
            })
    }

    /// Runs `step(0)`, `step(1)`, … `step(count - 1)` as the owner, stopping at the
    /// first that fails: in a child process that has become the owner when we are root
    /// and the owner is not, here otherwise. The steps run between fork and `_exit`, so
    /// they must make system calls only (on data prepared before), which keeps this
    /// safe in a multi-threaded caller. Err: the index of the failed step (None when
    /// becoming the owner failed) and its error.
    pub fn steps_as_owner(
        &self,
        count: usize,
        step: impl Fn(usize) -> io::Result<()>,
    ) -> std::result::Result<(), (Option<usize>, StepError)> {
        if !self.needs_switch() {
            return (0..count)
                .try_for_each(|index| step(index).map_err(|e| (Some(index), StepError::Os(e))));
        }
        // The child reports the index of the step that failed and its errno.
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the two descriptors.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err((
                None,
                StepError::Setup("cannot create a pipe", io::Error::last_os_error()),
            ));
        }
        // SAFETY: the child only makes system calls and leaves with _exit.
        let child = unsafe { libc::fork() };
        if child < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: our own descriptors.
            unsafe { libc::close(pipe[0]) };
            unsafe { libc::close(pipe[1]) };
            return Err((None, StepError::Setup("cannot fork", e)));
        }
        if child == 0 {
            let report = |index: u32, errno: i32| -> ! {
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&index.to_ne_bytes());
                bytes[4..].copy_from_slice(&errno.to_ne_bytes());
                // SAFETY: write and _exit are async-signal-safe.
                unsafe {
                    libc::write(pipe[1], bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(1)
                }
            };
            if let Err(e) = self.become_owner() {
                report(u32::MAX, e.raw_os_error().unwrap_or(libc::EPERM));
            }
            for index in 0..count {
                if let Err(e) = step(index) {
                    report(index as u32, e.raw_os_error().unwrap_or(libc::EIO));
                }
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: our end; the child has its own copy.
        unsafe { libc::close(pipe[1]) };
        let mut answer = [0u8; 8];
        // SAFETY: reads into our buffer from our descriptor.
        let got = unsafe { libc::read(pipe[0], answer.as_mut_ptr().cast(), answer.len()) };
        unsafe { libc::close(pipe[0]) };
        let mut status = 0;
        // SAFETY: waits for our own child.
        while unsafe { libc::waitpid(child, &mut status, 0) } < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
        if got == 8 {
            let index = u32::from_ne_bytes(answer[..4].try_into().unwrap_or_default());
            let errno = u32::from_ne_bytes(answer[4..].try_into().unwrap_or_default()) as i32;
            let e = io::Error::from_raw_os_error(errno);
            return Err(match index {
                u32::MAX => (None, StepError::Become(e)),
                index => (Some(index as usize), StepError::Os(e)),
            });
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err((None, StepError::Died));
        }
        Ok(())
    }
}

/// Why [`Owner::steps_as_owner`] failed.
#[derive(Debug)]
pub enum StepError {
    /// A step failed with this error.
    Os(io::Error),
    /// The child could not become the owner.
    Become(io::Error),
    /// The child could not be started.
    Setup(&'static str, io::Error),
    /// The child ended without a report.
    Died,
}

impl StepError {
    /// The error of a failure that is not a step's, for the user `uid`.
    pub fn into_error(self, uid: u32) -> Error {
        match self {
            StepError::Os(e) => Error::io(format!("acting as uid {uid}"), e),
            StepError::Become(e) => Error::io(format!("cannot become uid {uid}"), e),
            StepError::Setup(what, e) => Error::io(what, e),
            StepError::Died => Error::msg(format!("acting as uid {uid} failed")),
        }
    }
}

fn refusal(path: &Path, why: String) -> Error {
    Error::new(codes::OPAL_ERR_PERM, format!("refusing snapshot {}: {why}", path.display()))
}

/// A path for a system call.
pub fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::new(codes::OPAL_ERR_BAD_PARAM, format!("{}: contains a NUL byte", path.display()))
    })
}

fn create_failed(path: &CStr, e: io::Error) -> Error {
    Error::io(format!("cannot create {}", path.to_string_lossy()), e)
}

/// One `mkdir` (an existing directory is fine) or one `open(O_CREAT)` of a file that
/// is not followed if it is a link. System calls only.
fn create_one(path: &CStr, is_dir: bool) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed at once.
    unsafe {
        if is_dir {
            if libc::mkdir(path.as_ptr(), 0o777) == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            let mut st: libc::stat = std::mem::zeroed();
            let is_existing_dir = e.raw_os_error() == Some(libc::EEXIST)
                && libc::stat(path.as_ptr(), &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            return if is_existing_dir { Ok(()) } else { Err(e) };
        }
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o666,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(fd);
    }
    Ok(())
}

/// Supplementary groups of `name`, with its primary group.
fn group_list(name: &CStr, primary: libc::gid_t) -> Vec<libc::gid_t> {
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let wanted = count;
        // SAFETY: the buffer holds `count` gids; getgrouplist updates count.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count as usize);
            return groups;
        }
        if count <= wanted {
            return vec![primary];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_in_the_password_database() {
        let root = Owner::of_uid(0, 99);
        assert_eq!((root.uid, root.gid, root.name.as_deref()), (0, 0, Some("root")));
        assert!(root.groups.contains(&0));
        let unknown = Owner::of_uid(3_999_999, 77);
        assert_eq!((unknown.gid, unknown.groups.len(), unknown.home), (77, 0, None));
    }

    #[test]
    fn a_snapshot_and_its_series_must_agree_and_not_be_links() {
        let base = std::env::temp_dir().join(format!("opalcrs-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("s/0")).unwrap();
        std::os::unix::fs::symlink(base.join("s/0"), base.join("s/1")).unwrap();
        let owner = Owner::of_snapshot(&base.join("s/0"), Some(&base.join("s"))).unwrap();
        assert_eq!(owner.uid, effective_uid());
        owner.check_caller(&base).unwrap();
        let err = Owner::of_snapshot(&base.join("s/1"), Some(&base.join("s"))).unwrap_err();
        assert!(err.message().contains("symbolic link"), "{err}");
        if effective_uid() == 0 {
            std::os::unix::fs::lchown(base.join("s/0"), Some(65534), None).unwrap();
            let err = Owner::of_snapshot(&base.join("s/0"), Some(&base.join("s"))).unwrap_err();
            assert!(err.message().contains("belongs to uid 65534 but its series"), "{err}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn creating_as_owner_makes_parents_and_keeps_existing_files() {
        let base = std::env::temp_dir().join(format!("opalcrs-owner-mk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("kept"), b"data").unwrap();
        let me = Owner::of_uid(effective_uid(), 0);
        me.create_as_owner(&[base.join("a/b/c")], &[base.join("kept"), base.join("a/new")])
            .unwrap();
        assert!(base.join("a/b/c").is_dir());
        assert_eq!(std::fs::read(base.join("kept")).unwrap(), b"data");
        assert!(base.join("a/new").is_file());
        let err = me.create_as_owner(&[base.join("kept/x")], &[]).unwrap_err();
        let expected = format!("cannot create {}: File exists", base.join("kept").display());
        assert!(err.message().starts_with(&expected), "{err}");
        if effective_uid() == 0 {
            // As nobody: a root-only directory stays closed.
            let nobody = Owner { uid: 65534, gid: 65534, groups: vec![], name: None, home: None };
            std::fs::create_dir(base.join("root-only")).unwrap();
            let err = nobody.create_as_owner(&[], &[base.join("root-only/f")]).unwrap_err();
            assert!(err.message().contains("Permission denied"), "{err}");
            assert!(!base.join("root-only/f").exists());
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}

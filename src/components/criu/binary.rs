//! Finding a usable `criu` executable. Only CRIU >= 4 counts: older ones (Debian 12's
//! 3.17) fail on current kernels, so a 3.x that is found is named in the error instead of
//! being used. Finding is cheap (existence and `criu --version`, cached per path for the
//! life of the process) because `opal_init` does it; the full `criu check` runs once, at
//! the first checkpoint.

use super::rpc;
use crate::codes;
use crate::error::{Error, Result};
use log::debug;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Oldest CRIU major version that works here.
pub(crate) const MIN_MAJOR: u32 = 4;

/// Searched after `PATH`, in this order.
const FALLBACK_PATHS: [&str; 3] = ["/opt/criu/sbin/criu", "/usr/local/sbin/criu", "/usr/sbin/criu"];

/// `criu --version` answers in milliseconds; a binary that hangs must not hang us.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Linux capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

type Version = (u32, u32, u32);

/// A `criu` executable whose `--version` said major >= 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriuBinary {
    pub path: PathBuf,
    pub version: (u32, u32, u32),
}

/// The configured path if given (and nothing else then), else the first CRIU >= 4 in
/// `PATH`, /opt/criu/sbin, /usr/local/sbin, /usr/sbin.
pub fn find(configured: Option<&Path>) -> Result<CriuBinary> {
    if let Some(path) = configured {
        if !is_executable_file(path) {
            return Err(Error::new(
                codes::OPAL_ERR_NOT_AVAILABLE,
                format!(
                    "CRIU binary {} (crs_criu_binary): no such executable file",
                    path.display()
                ),
            ));
        }
        return usable(path);
    }
    let mut rejected = Vec::new();
    for path in candidates() {
        if !is_executable_file(&path) {
            continue;
        }
        match usable(&path) {
            Ok(found) => return Ok(found),
            Err(e) => {
                debug!("crs:criu: {}", e.message());
                rejected.push(e.message().to_string());
            }
        }
    }
    let message = if rejected.is_empty() {
        format!(
            "CRIU not found in PATH, {}: install CRIU >= {MIN_MAJOR} or set crs_criu_binary",
            FALLBACK_PATHS.join(", ")
        )
    } else {
        format!("no usable CRIU: {}", rejected.join("; "))
    };
    Err(Error::new(codes::OPAL_ERR_NOT_AVAILABLE, message))
}

impl CriuBinary {
    /// CRIU's own check of the kernel and its privileges (`criu check` through the RPC
    /// service). Runs once per binary and process; later calls return at once.
    pub fn check(&self) -> Result<()> {
        static PASSED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
        let passed = PASSED.get_or_init(Default::default);
        if passed.lock().unwrap_or_else(PoisonError::into_inner).contains(&self.path) {
            return Ok(());
        }
        rpc::check(self)?;
        passed.lock().unwrap_or_else(PoisonError::into_inner).insert(self.path.clone());
        Ok(())
    }
}

/// Whether this process may checkpoint: root, or CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN
/// in its effective set.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let wanted = 1u64 << CAP_CHECKPOINT_RESTORE | 1u64 << CAP_SYS_ADMIN;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_caps(&status))
        .is_some_and(|caps| caps & wanted != 0)
}

/// The `CapEff:` mask of a /proc/PID/status text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn candidates() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| dir.is_absolute()) // an empty or relative entry would mean the cwd
        .map(|dir| dir.join("criu"))
        .collect();
    paths.extend(FALLBACK_PATHS.iter().map(PathBuf::from));
    let mut seen = HashSet::new();
    paths.retain(|path| seen.insert(path.clone()));
    paths
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn usable(path: &Path) -> Result<CriuBinary> {
    let version = probe(path)?;
    if version.0 < MIN_MAJOR {
        let (major, minor, sublevel) = version;
        return Err(Error::new(
            codes::OPAL_ERR_NOT_AVAILABLE,
            format!(
                "found {} {major}.{minor}.{sublevel}, need CRIU >= {MIN_MAJOR}",
                path.display()
            ),
        ));
    }
    Ok(CriuBinary { path: path.to_path_buf(), version })
}

/// The version of an existing executable, asked once per path and process. A failure
/// to run the file is not remembered: it may work next time.
fn probe(path: &Path) -> Result<Version> {
    static PROBES: OnceLock<Mutex<HashMap<PathBuf, Result<Version>>>> = OnceLock::new();
    let probes = PROBES.get_or_init(Default::default);
    if let Some(known) = probes.lock().unwrap_or_else(PoisonError::into_inner).get(path) {
        return known.clone();
    }
    let probed = version_answer(path, spawn_version(path)?);
    debug!("crs:criu: {} --version: {probed:?}", path.display());
    probes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(path.to_path_buf(), probed.clone());
    probed
}

fn not_criu(path: &Path, why: String) -> Error {
    Error::new(
        codes::OPAL_ERR_NOT_AVAILABLE,
        format!("{} is not a usable CRIU: {why}", path.display()),
    )
}

/// Starts `criu --version`, retrying a little on ETXTBSY: the file is being written (an
/// upgrade in progress, or a descriptor that leaked into a process forked meanwhile).
fn spawn_version(path: &Path) -> Result<Child> {
    let mut busy_retries = 0;
    loop {
        let spawned = Command::new(path)
            .arg("--version")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && busy_retries < 10 => {
                busy_retries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(not_criu(path, format!("cannot run it: {e}"))),
        }
    }
}

/// The version `criu --version` prints, within VERSION_TIMEOUT.
fn version_answer(path: &Path, mut child: Child) -> Result<Version> {
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let why = format!("`--version` did not answer within {VERSION_TIMEOUT:?}");
                return Err(not_criu(path, why));
            }
            Err(e) => return Err(not_criu(path, format!("waiting for `--version`: {e}"))),
        }
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    parse_version(&output).ok_or_else(|| {
        let first_line = output.lines().next().unwrap_or("");
        not_criu(path, format!("`--version` ({status}) printed no version: {first_line:?}"))
    })
}

/// "Version: 4.1.1" (a missing sublevel counts as 0; suffixes such as "-rc1" are ignored).
fn parse_version(output: &str) -> Option<Version> {
    let text = output.lines().find_map(|line| line.trim().strip_prefix("Version:"))?;
    let mut numbers = text.trim().split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let sublevel = numbers.next().flatten().unwrap_or(0);
    Some((major, minor, sublevel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::criu::rpc::TempDir;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn parses_criu_version_output() {
        assert_eq!(parse_version("Version: 4.1.1\n"), Some((4, 1, 1)));
        assert_eq!(parse_version("Version: 3.17.1\nGitID: v3.17.1\n"), Some((3, 17, 1)));
        assert_eq!(parse_version("Version: 4.0\n"), Some((4, 0, 0)));
        assert_eq!(parse_version("  Version: 4.2-rc1\n"), Some((4, 2, 0)));
        assert_eq!(parse_version("criu 4.1\n"), None);
        assert_eq!(parse_version("Version: x.y\n"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn reads_effective_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn root_is_privileged() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(privileged());
        }
    }

    #[test]
    fn finds_installed_criu_4() {
        let found = match find(None) {
            Ok(found) => found,
            Err(e) => return eprintln!("skipped: needs CRIU >= 4 ({e})"),
        };
        assert!(found.version.0 >= MIN_MAJOR);
        assert!(found.path.is_absolute());
        let started = Instant::now();
        assert_eq!(find(None).unwrap(), found);
        assert!(started.elapsed() < Duration::from_millis(50), "second find is cached");
    }

    #[test]
    fn missing_configured_binary_is_a_clear_error() {
        let err = find(Some(Path::new("/nonexistent/criu"))).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_AVAILABLE);
        assert!(err.message().contains("/nonexistent/criu"), "{err}");
        assert!(err.message().contains("no such executable file"), "{err}");
    }

    #[test]
    fn criu_3_is_refused_and_named() {
        let dir = TempDir::new("criu-fake").unwrap();
        let fake = script(dir.path(), "criu", "echo 'Version: 3.17.1'");
        let err = find(Some(&fake)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_AVAILABLE);
        let expected = format!("found {} 3.17.1, need CRIU >= 4", fake.display());
        assert_eq!(err.message(), expected);
    }

    #[test]
    fn a_binary_without_version_is_refused() {
        let dir = TempDir::new("criu-fake").unwrap();
        let fake = script(dir.path(), "criu", "echo hello");
        let err = find(Some(&fake)).unwrap_err();
        assert!(err.message().contains("printed no version"), "{err}");
    }

    #[test]
    fn version_is_asked_once_per_path() {
        let dir = TempDir::new("criu-fake").unwrap();
        let calls = dir.path().join("calls");
        let fake = script(
            dir.path(),
            "criu",
            &format!("echo run >> '{}'; echo 'Version: 4.9.0'", calls.display()),
        );
        assert_eq!(find(Some(&fake)).unwrap().version, (4, 9, 0));
        assert_eq!(find(Some(&fake)).unwrap().version, (4, 9, 0));
        assert_eq!(std::fs::read_to_string(&calls).unwrap(), "run\n");
    }
}

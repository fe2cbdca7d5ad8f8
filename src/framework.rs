//! The CRS framework: the component trait, the registry of components and selection by
//! priority with the `crs` list (design §3). Adding a component means one module under
//! `components/` and one line in `COMPONENTS`.

use crate::codes::*;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::snapshot::Metadata;
use std::path::{Path, PathBuf};

/// How a checkpoint ended in this process image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// The same process goes on (OPAL_CRS_CONTINUE).
    Continue,
    /// This is a restored image of the process (OPAL_CRS_RESTART).
    Restarted,
}

/// What a component gets to write one snapshot.
pub struct CheckpointJob<'a> {
    pub params: &'a Params,
    /// The snapshot directory being written (a temporary name until published).
    pub dir: &'a Path,
    /// Metadata to be written into `snapshot_meta.data`; components add their tokens.
    pub metadata: &'a mut Metadata,
    /// Where a privileged `opal-checkpoint` that sent the request offers to dump the
    /// process for it, when the process may not run CRIU itself.
    pub dump_helper: Option<&'a crate::components::criu::behalf::DumpHelper>,
}

/// A snapshot chosen for restart.
pub struct RestartPlan {
    pub dir: PathBuf,
    pub metadata: Metadata,
    pub series: Option<PathBuf>,
    pub seq: Option<u64>,
    /// Whose snapshot it is: what it asks for runs as this user (README, "Security model").
    pub owner: crate::owner::Owner,
    /// Parameters given to the restart tool (`-mca`), applied on top of the recorded ones.
    pub params: Params,
    pub verbose: bool,
    /// The snapshot has not been checked against its manifest yet. Only for components
    /// that [`check while restoring`](Component::checks_while_restoring): the restarted
    /// program must not run before the check passes, and
    /// [`RestartOutcome::Rejected`] reports that it failed.
    pub unchecked: bool,
    /// A job's rank restarted by its launcher (this process): it ends when the launcher
    /// dies, see [`end_with_parent`].
    pub end_with_parent: bool,
}

/// Between fork and exec of a job's rank: the rank gets SIGKILL when `parent` (the
/// launcher; the thread that forks must live as long as it) dies, as `mpirun`'s ranks
/// do, so that no rank goes on orphaned. Fails when the launcher is already gone. Set
/// after any change of user, which clears it.
pub(crate) fn end_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe system calls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// How a restart ended, when it returns at all (an exec does not).
pub enum RestartOutcome {
    /// `--fork`: the restarted process runs as this child (PID as seen from here).
    Spawned { pid: i32, note: Option<String> },
    /// The restarted process was waited for; its status (code, or 128+N for signal N).
    Exited(i32),
    /// The snapshot is at fault: an `unchecked` plan's snapshot failed its check, or its
    /// restore stalled on it. The restarted program never ran and is gone. Says why, as
    /// a [`Verdict`](crate::snapshot::Verdict) does.
    Rejected(String),
}

pub trait Component: Sync {
    fn name(&self) -> &'static str;

    fn priority(&self, params: &Params) -> i64;

    /// Whether the component can serve this process; the error says why not.
    fn query(&self, params: &Params) -> std::result::Result<(), String>;

    /// Module init, in `opal_init` after selection (self runs its restart callback here).
    fn init(&self, _params: &Params) -> Result<()> {
        Ok(())
    }

    fn finalize(&self) {}

    /// Writes one snapshot of the calling process into `job.dir`.
    fn checkpoint(&self, job: &mut CheckpointJob) -> Result<CheckpointOutcome>;

    /// Restarts from a snapshot; with `spawn_child` the restarted process is a child.
    fn restart(&self, plan: &RestartPlan, spawn_child: bool) -> Result<RestartOutcome>;

    /// Whether the component can restore a snapshot while it is being checked against
    /// its manifest, holding the restored program until the check passes: reading a
    /// large image twice in a row (check, then restore) is what such a restart saves.
    fn checks_while_restoring(&self) -> bool {
        false
    }

    /// Err, with the message a restore would give, when a snapshot of this component
    /// in `dir` cannot be restored on this node (criu: another kernel, executable or
    /// library); `opal-restart --verify` asks it too.
    fn restorable_here(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Files the snapshot depends on (executable, libraries), for the manifest.
    fn identity(&self) -> Vec<crate::snapshot::IdentityEntry> {
        Vec::new()
    }

    /// Runs a helper process the component starts as `opal-checkpoint MODE ARGS…` (the
    /// criu image follower): its exit status, or None if `mode` is not one of its own.
    fn helper(&self, _mode: &std::ffi::OsStr, _args: &[std::ffi::OsString]) -> Option<i32> {
        None
    }

    /// Whether the process ends once its snapshot is published even without `--term`
    /// (criu with `crs_criu_leave_running=0`).
    fn ends_process(&self, _params: &Params) -> bool {
        false
    }

    /// Whether every outside connection (the control socket) must be closed while the
    /// component runs: true for whole-process images.
    fn needs_quiet_connections(&self) -> bool {
        false
    }
}

static COMPONENTS: &[&dyn Component] = &[
    &crate::components::self_::SelfComponent,
    &crate::components::criu::CriuComponent,
    &crate::components::none::NoneComponent,
];

/// Components of the original that this library does not provide.
const NOT_AVAILABLE: &[&str] = &["blcr", "dmtcp"];

pub fn by_name(name: &str) -> Option<&'static dyn Component> {
    COMPONENTS.iter().copied().find(|c| c.name() == name)
}

/// Runs the component helper `mode` (see [`Component::helper`]), if a component has it.
pub fn run_helper(mode: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> Option<i32> {
    COMPONENTS.iter().find_map(|c| c.helper(mode, args))
}

pub fn names() -> Vec<&'static str> {
    COMPONENTS.iter().map(|c| c.name()).collect()
}

/// Selects the highest-priority component that the `crs` list allows and that can
/// serve this process.
pub fn select(params: &Params) -> Result<&'static dyn Component> {
    let selection = params.crs_selection();
    let (exclude, named) = (selection.exclude, selection.components);
    if !exclude {
        if let Some(missing) = named.iter().find(|n| NOT_AVAILABLE.contains(n)) {
            return Err(Error::new(
                OPAL_ERR_NOT_AVAILABLE,
                format!(
                    "crs component '{missing}' is not available on this system (this library provides: {})",
                    names().join(", ")
                ),
            ));
        }
    }
    let mut candidates: Vec<&'static dyn Component> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| named.is_empty() || named.contains(&c.name()) != exclude)
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.priority(params)));

    let mut refusals = Vec::new();
    for component in candidates {
        log::debug!(target: "crs", "crs:{}: component_query() priority = {}", component.name(), component.priority(params));
        match component.query(params) {
            Ok(()) => return Ok(component),
            Err(why) => refusals.push(format!("{}: {why}", component.name())),
        }
    }
    Err(Error::new(
        OPAL_ERR_NOT_FOUND,
        if refusals.is_empty() {
            format!("no crs component matches crs=\"{}\"", params.str("crs"))
        } else {
            format!("no crs component can be selected ({})", refusals.join("; "))
        },
    ))
}

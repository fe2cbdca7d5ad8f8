//! Parallel jobs on one machine: `opal-run -np N` starts N ranks of a program as its
//! children and stays their parent, the launcher. The launcher gives each rank its
//! place in the job (`OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK`), passes signals on to the
//! ranks, ends the job when a rank fails and is itself a checkpoint endpoint
//! (`endpoint`): `opal-checkpoint <launcher pid>` takes one global snapshot of every
//! rank (`global`), and a job restarts from the newest complete one.
//!
//! Ranks are started by the launcher here; the coordination speaks to each rank over
//! its own control socket, so ranks started elsewhere (by `srun`) only need another way
//! to reach them.

pub mod agent;
mod channel;
pub mod endpoint;
pub mod global;
pub mod launcher;

use crate::codes::*;
use crate::error::Error;
use crate::framework::RestartOutcome;
use crate::params::Params;
use crate::restart::{Check, Step, Target};
use crate::snapshot;
use global::GlobalMetadata;
use std::ffi::OsString;
use std::path::PathBuf;

/// What `opal-run -np N` was asked to run.
pub struct JobOptions {
    pub size: usize,
    pub command: Vec<OsString>,
    /// `-mca` pairs, given to every rank as `OMPI_MCA_<name>`.
    pub mca: Vec<(String, String)>,
    /// `-w`: the directory that holds the job's series, also the ranks' own.
    pub dir: Option<PathBuf>,
    /// The job's global series: its directory and name.
    pub base: PathBuf,
    pub name: String,
    /// The launcher's parameters (the store's: keep, fsync; the checkpoint signal).
    pub params: Params,
}

/// Parameters that the launcher acts on for the whole job, and that the ranks therefore
/// do not get: each rank checkpointing itself on an interval would be no job checkpoint,
/// and a rank's own checkpoint must not land in the job's global series.
const LAUNCHER_ONLY: &[&str] = &["opal_cr_checkpoint_interval", "crs_base_snapshot_name"];

/// The environment every rank gets on a fresh start: the `-mca` parameters (but the
/// launcher's own) and the snapshot directory.
pub fn job_environment(options: &JobOptions) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = options
        .mca
        .iter()
        .filter(|(k, _)| !LAUNCHER_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (format!("OMPI_MCA_{k}"), v.into()))
        .collect();
    if let Some(dir) = &options.dir {
        env.push(("OMPI_MCA_crs_base_snapshot_dir".into(), dir.as_os_str().to_owned()));
    }
    env
}

/// Starts the job fresh and supervises it: the job's exit status, or why its program
/// could not be started.
pub fn launch(options: &JobOptions) -> std::io::Result<i32> {
    let job = endpoint::Job {
        launcher_pid: std::process::id() as i32,
        ranks: Vec::new(),
        base: options.base.clone(),
        name: options.name.clone(),
        params: options.params.clone(),
        agents: None,
    };
    if agent::across_nodes() {
        return agent::launch(&agent::Launch {
            size: options.size,
            command: options.command.clone(),
            env: job_environment(options),
            restart: None,
            job,
        });
    }
    let signal = checkpoint_signal(&options.params);
    launcher::install_signal_handlers(&signal.into_iter().collect::<Vec<_>>());
    let ranks = launcher::start(
        &options.command,
        0..options.size,
        options.size,
        &job_environment(options),
        &launcher_only_variables(),
    )?;
    let job = endpoint::Job { ranks: ranks.clone(), ..job };
    Ok(serve_and_supervise(job, &ranks, &rank_named(0), signal))
}

/// The variables of the launcher's own parameters, which the ranks do not get.
fn launcher_only_variables() -> Vec<String> {
    LAUNCHER_ONLY.iter().map(|name| format!("OMPI_MCA_{name}")).collect()
}

/// Whether `target` names a job's global series (or one global snapshot).
pub fn is_job(target: &Target) -> bool {
    snapshot::locate(&target.reference, &target.base, target.seq)
        .is_ok_and(|located| global::is_global_snapshot(&located.dir))
}

/// The global snapshot a job restart would use: the newest good one of the series (or
/// `seq`); a rank whose snapshot is damaged fails the whole global snapshot's check.
pub fn choose(target: &Target) -> Result<(snapshot::Resolved, GlobalMetadata), Error> {
    let resolved = snapshot::resolve(&target.reference, &target.base, target.seq)?;
    let metadata = GlobalMetadata::read(&resolved.dir)?;
    Ok((resolved, metadata))
}

/// Restarts every rank of the global snapshot `resolved` as a child of this process,
/// which becomes the job's launcher (checkpointable again, into the same series), and
/// supervises them: the job's status (`Exited`). A rank that cannot be restarted ends
/// the others. criu: see [`restore_tree`]; `as_child` as there. A job across nodes
/// (self, or criu with one image per node) is restarted through node agents, criu on
/// as many nodes as it had.
pub fn restart(
    resolved: &snapshot::Resolved,
    metadata: &GlobalMetadata,
    params: &Params,
    verbose: bool,
    as_child: bool,
) -> Result<RestartOutcome, (Step, Error)> {
    let images = metadata.nodes.len();
    if metadata.component == "criu" && images == 0 {
        return restore_tree(resolved, params, verbose, as_child);
    }
    if images > 0 && agent::allocated_nodes() != images {
        let message = format!(
            "global snapshot {}: a criu job of {images} nodes (one image each) restarts on {images} nodes, not on the {} of this allocation",
            resolved.dir.display(),
            agent::allocated_nodes()
        );
        return Err((Step::Choose, Error::new(OPAL_ERR_BAD_PARAM, message)));
    }
    if metadata.component != "self" && images == 0 {
        return Err((
            Step::Choose,
            Error::new(
                OPAL_ERR_NOT_SUPPORTED,
                format!(
                    "global snapshot {}: written by component {}, which a job restart does not know",
                    resolved.dir.display(),
                    metadata.component
                ),
            ),
        ));
    }
    let size = metadata.ranks.len();
    if agent::across_nodes() || images > 0 {
        return agent::launch(&agent::Launch {
            size,
            command: Vec::new(),
            env: Vec::new(),
            restart: Some(resolved.dir.clone()),
            job: job_of_series(resolved, params),
        })
        .map(RestartOutcome::Exited)
        .map_err(|e| {
            (Step::Start, Error::io("starting the node agents with srun".to_string(), e))
        });
    }
    let mut plans = Vec::with_capacity(size);
    for rank in 0..size {
        plans.push(
            prepare_rank(&resolved.dir, rank, params, verbose).map_err(|e| (Step::Choose, e))?,
        );
    }
    // Root restarting another user's job: the launcher becomes that user before it
    // starts anything, so the ranks, the launcher's socket and the snapshots it writes
    // into the user's series are the user's (and the user may checkpoint the job).
    let owner = &plans[0].plan.owner;
    if plans.iter().any(|p| p.plan.owner.uid != owner.uid) {
        let message = format!(
            "global snapshot {}: its ranks belong to different users",
            resolved.dir.display()
        );
        return Err((Step::Choose, Error::new(OPAL_ERR_PERM, message)));
    }
    if owner.needs_switch() {
        owner.become_owner().map_err(|e| {
            (Step::Start, Error::io(format!("becoming uid {}, the owner of the job", owner.uid), e))
        })?;
        // The id change made the process undumpable, which would hide its control
        // socket from the user's tools; it holds nothing of root's any more.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
    }
    let signal = checkpoint_signal(params);
    launcher::install_signal_handlers(&signal.into_iter().collect::<Vec<_>>());
    let mut ranks = Vec::with_capacity(size);
    for (rank, prepared) in plans.iter().enumerate() {
        match start_rank(prepared, rank, rank, size) {
            Ok(pid) => ranks.push(pid),
            Err(e) => {
                launcher::end_all(&ranks, &[]);
                return Err((Step::Start, e));
            }
        }
    }
    let mut job = job_of_series(resolved, params);
    job.ranks = ranks;
    let children = job.ranks.clone();
    Ok(RestartOutcome::Exited(serve_and_supervise(job, &children, &rank_named(0), signal)))
}

/// The job that a restart from `resolved` continues: its checkpoints go on in the same
/// series. Its ranks are filled in once they run.
fn job_of_series(resolved: &snapshot::Resolved, params: &Params) -> endpoint::Job {
    let series = resolved.series.as_ref().map_or(resolved.dir.as_path(), |s| s.path());
    endpoint::Job {
        launcher_pid: std::process::id() as i32,
        ranks: Vec::new(),
        base: series.parent().unwrap_or(std::path::Path::new("/")).to_path_buf(),
        name: series.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        params: params.clone(),
        agents: None,
    }
}

/// Rank `rank` of the (self) global snapshot `global`, checked and ready to restart as
/// a child of this process.
fn prepare_rank(
    global: &std::path::Path,
    rank: usize,
    params: &Params,
    verbose: bool,
) -> Result<crate::restart::Prepared, Error> {
    let local = Target::path(global::rank_snapshot(global, rank));
    // The global snapshot's manifest, checked by `choose`, covers every byte of it.
    let mut prepared =
        crate::restart::prepare(&local, params.clone(), verbose, Check::Covered, &[])?;
    // The rank's own series is inside the global snapshot: its later checkpoints of
    // its own go to its default series instead.
    prepared.plan.series = None;
    prepared.plan.end_with_parent = true;
    Ok(prepared)
}

/// Restarts a prepared rank as a child of this process, with its place in the job
/// (`local` its number on this node): its PID. Called before any other thread runs.
fn start_rank(
    prepared: &crate::restart::Prepared,
    rank: usize,
    local: usize,
    size: usize,
) -> Result<i32, Error> {
    crate::restart::apply_records(&prepared.plan)?;
    for (name, value) in launcher::rank_environment(rank, local, size) {
        // Single-threaded here: the endpoint's thread starts after the ranks.
        std::env::set_var(name, value);
    }
    match prepared.component.restart(&prepared.plan, true)? {
        RestartOutcome::Spawned { pid, .. } => Ok(pid),
        _ => unreachable!("a self restart as a child is spawned"),
    }
}

/// criu: the global snapshot is one image of the launcher's tree; it is restored as
/// this process's child (the launcher, with its ranks below it, goes on as it was):
/// waited for (`Exited`, the job's status), or with `as_child` left to the caller
/// (`Spawned`), which may pass signals on to it.
fn restore_tree(
    resolved: &snapshot::Resolved,
    params: &Params,
    verbose: bool,
    as_child: bool,
) -> Result<RestartOutcome, (Step, Error)> {
    let target = Target::path(resolved.dir.clone());
    crate::restart::run(&target, params, verbose, &mut |_| as_child)
}

/// Names the children of a launcher that are ranks `first`, `first + 1`, ...
fn rank_named(first: usize) -> impl Fn(usize) -> String {
    move |index| format!("rank {}", first + index)
}

/// The launcher's checkpoint signal (`opal_cr_signal`), unless it is one passed on.
fn checkpoint_signal(params: &Params) -> Option<libc::c_int> {
    let signal = params.int("opal_cr_signal") as libc::c_int;
    (signal > 0 && !launcher::FORWARDED.contains(&signal)).then_some(signal)
}

/// Serves checkpoints of the job (asked for, on the checkpoint signal and every
/// `opal_cr_checkpoint_interval` seconds) and waits for its `children` (the ranks, or
/// the `srun` of the node agents; `name` says which, see [`launcher::supervise`]): the
/// job's status.
fn serve_and_supervise(
    job: endpoint::Job,
    children: &[i32],
    name: &dyn Fn(usize) -> String,
    signal: Option<libc::c_int>,
) -> i32 {
    let params = job.params.clone();
    let endpoint = match endpoint::Endpoint::start(job) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            eprintln!("opal-run: warning: the job cannot be checkpointed (no control socket: {e})");
            None
        }
    };
    let interval = params.int("opal_cr_checkpoint_interval");
    if let (Some(endpoint), true) = (&endpoint, interval > 0) {
        let endpoint = endpoint.clone();
        let spawned =
            std::thread::Builder::new().name("opalcrs-interval".into()).spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(interval as u64));
                endpoint.checkpoint_now();
            });
        if let Err(e) = spawned {
            eprintln!("opal-run: warning: no interval checkpoints: {e}");
        }
    }
    launcher::supervise(children, name, &mut |received| {
        if let (Some(endpoint), true) = (&endpoint, Some(received) == signal) {
            endpoint.checkpoint_now();
        }
    })
}

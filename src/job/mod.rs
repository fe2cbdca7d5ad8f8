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

pub mod launcher;

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
}

/// The environment every rank gets on a fresh start: the `-mca` parameters and the
/// snapshot directory.
pub fn job_environment(options: &JobOptions) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> =
        options.mca.iter().map(|(k, v)| (format!("OMPI_MCA_{k}"), v.into())).collect();
    if let Some(dir) = &options.dir {
        env.push(("OMPI_MCA_crs_base_snapshot_dir".into(), dir.as_os_str().to_owned()));
    }
    env
}

/// Starts the job fresh and supervises it: the job's exit status, or why its program
/// could not be started.
pub fn launch(options: &JobOptions) -> std::io::Result<i32> {
    launcher::install_signal_handlers(&[]);
    let ranks = launcher::start(&options.command, options.size, &job_environment(options))?;
    Ok(launcher::supervise(&ranks, &mut |_| {}))
}

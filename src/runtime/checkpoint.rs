//! One checkpoint of this process, through the three phases: prepare (user INC and
//! coordination callbacks), the component's checkpoint into a fresh numbered snapshot,
//! then continue or restart (INC and coordination callbacks again). The snapshot is
//! published atomically only when complete.

use super::{callbacks, critical, Runtime};
use crate::codes::*;
use crate::error::{Error, Result};
use crate::framework::{CheckpointJob, CheckpointOutcome};
use crate::snapshot::{Metadata, PublishOptions, Series};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What started a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Tool,
    Signal,
    Api,
    Interval,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub term: bool,
    pub name: Option<String>,
    pub dir: Option<PathBuf>,
    pub origin: Origin,
    /// Run the INC and coordination callbacks around the component (false for
    /// `opal_cr_inc_core_ckpt`, whose caller runs the phases itself).
    pub run_callbacks: bool,
    /// A privileged tool's offer to dump the process (see [`CheckpointJob`]).
    pub dump_helper: Option<crate::components::criu::behalf::DumpHelper>,
    /// A job launcher's connection (`hold` in the control protocol): the result goes to
    /// it once the snapshot is published, and the continue phase waits for its go.
    pub hold: Option<Arc<UnixStream>>,
}

impl Request {
    pub fn default_options(origin: Origin) -> Request {
        Request {
            term: false,
            name: None,
            dir: None,
            origin,
            run_callbacks: true,
            dump_helper: None,
            hold: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Continue, and the process is to end now that the snapshot is published.
    Term,
    /// This image was restored from the snapshot.
    Restarted,
}

#[derive(Debug, Clone)]
pub struct Done {
    pub outcome: Outcome,
    pub seq: u64,
    pub series: PathBuf,
    pub path: PathBuf,
    pub component: &'static str,
    pub running_ms: f64,
    pub finished_ms: f64,
    pub established_ms: f64,
}

/// How long a coordination callback may keep answering OPAL_EXISTS ("not ready").
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long a held checkpoint waits for its launcher's go before continuing anyway, so
/// that a launcher that dies never stalls the rank.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Takes one checkpoint. Runs on whichever thread serves requests; waits for open
/// critical sections first.
pub fn take(rt: &Runtime, request: &Request) -> Result<Done> {
    let started = Instant::now();
    let component = rt.component();
    if component.name() == "none" {
        return Err(Error::new(
            OPAL_ERR_NOT_SUPPORTED,
            crate::components::none::NOT_CHECKPOINTABLE,
        ));
    }
    let _section = critical::begin_checkpoint();
    let running_ms = millis(started);

    let series = rt.series_for(request)?;
    let pending = series.begin(rt.pid)?;
    super::set_current_snapshot_dir(Some(pending.dir.clone()));
    let result = run_phases(rt, request, &series, &pending.dir, pending.seq);
    super::set_current_snapshot_dir(None);

    let (outcome, metadata) = match result {
        Ok(done) => done,
        Err(e) => {
            pending.abandon();
            if request.run_callbacks {
                recover(OPAL_CRS_ERROR);
            }
            return Err(e);
        }
    };
    let seq = pending.seq;
    let finished_ms = millis(started);
    let path = match outcome {
        // The original process published this snapshot; the restored image only
        // learns where it is.
        CheckpointOutcome::Restarted => {
            std::mem::forget(pending);
            series.path().join(seq.to_string())
        }
        CheckpointOutcome::Continue => {
            let text = metadata.render()?;
            let written = pending.write_file(crate::snapshot::METADATA_FILE, text.as_bytes());
            let options = PublishOptions {
                fsync: rt.params.bool("crs_base_snapshot_fsync"),
                keep: rt.params.int("crs_base_snapshot_keep").max(0) as u64,
                component: component.name().to_string(),
                pid: rt.pid,
                host: crate::output::hostname(),
                identity: component.identity(),
            };
            match written.and_then(|()| pending.publish(options)) {
                Ok(published) => published.path,
                Err(e) => {
                    if request.run_callbacks {
                        recover(OPAL_CRS_ERROR);
                    }
                    return Err(e);
                }
            }
        }
    };
    let established_ms = millis(started);
    rt.remember(&series, seq, &path, request);

    let final_state =
        if outcome == CheckpointOutcome::Restarted { OPAL_CRS_RESTART } else { OPAL_CRS_CONTINUE };
    let outcome = match outcome {
        CheckpointOutcome::Restarted => Outcome::Restarted,
        CheckpointOutcome::Continue => {
            if request.term || component.ends_process(&rt.params) {
                Outcome::Term
            } else {
                Outcome::Continue
            }
        }
    };
    log::debug!(target: "cr", "cr: checkpoint {seq} of {} established in {established_ms:.2} ms", series.path().display());
    let done = Done {
        outcome,
        seq,
        series: series.path().to_path_buf(),
        path,
        component: component.name(),
        running_ms,
        finished_ms,
        established_ms,
    };
    if let (Some(launcher), Outcome::Continue) = (&request.hold, outcome) {
        hold(launcher, &done);
    }
    if request.run_callbacks {
        recover(final_state);
    }
    Ok(done)
}

/// Tells the launcher that this rank's snapshot is published and waits for its go (a
/// line, the connection's end, or [`HOLD_LIMIT`]): whatever the launcher decides, the
/// rank continues.
fn hold(launcher: &UnixStream, done: &Done) {
    let told = launcher
        .set_nonblocking(false)
        .and_then(|()| launcher.set_write_timeout(Some(HOLD_LIMIT)))
        .and_then(|()| crate::control::write_message(launcher, &super::server::held_reply(done)));
    if let Err(e) = told {
        log::warn!(target: "cr", "cr: cannot tell the job launcher that the checkpoint is done: {e}");
        return;
    }
    let mut go = String::new();
    let waited = launcher
        .set_read_timeout(Some(HOLD_LIMIT))
        .and_then(|()| BufReader::new(launcher).read_line(&mut go));
    if let Err(e) = waited {
        log::warn!(target: "cr", "cr: no go from the job launcher ({e}); continuing");
    }
}

/// Phase one and the component's checkpoint; returns the outcome and the metadata.
fn run_phases(
    rt: &Runtime,
    request: &Request,
    series: &Series,
    dir: &std::path::Path,
    seq: u64,
) -> Result<(CheckpointOutcome, Metadata)> {
    if request.run_callbacks {
        prepare()?;
    }
    let mut metadata = Metadata {
        pid: Some(rt.pid),
        component: Some(rt.component().name().to_string()),
        cwd: std::env::current_dir().ok(),
        params: rt
            .params
            .iter()
            .filter(|(def, _, source)| {
                !matches!(source, crate::params::Source::Default)
                    && !crate::params::table::PER_RUN.contains(&def.name)
            })
            .map(|(def, value, _)| (def.name.to_string(), value.to_string()))
            .collect(),
        series: Some(series.path().to_path_buf()),
        seq: Some(seq),
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        host: Some(crate::output::hostname()),
        ..Metadata::default()
    };
    if request.term {
        log::debug!(target: "cr", "cr: the process will end after this checkpoint (--term)");
    }
    if request.run_callbacks {
        callbacks::trigger_user_inc(OMPI_CR_INC_CRS_PRE_CKPT, OMPI_CR_INC_STATE_PREPARE);
    }
    let mut job = CheckpointJob {
        params: &rt.params,
        dir,
        metadata: &mut metadata,
        dump_helper: request.dump_helper.as_ref(),
    };
    let outcome = rt.component().checkpoint(&mut job)?;
    Ok((outcome, metadata))
}

/// Phase one: INC callbacks around the coordination chain, which may answer
/// OPAL_EXISTS ("not ready yet") for a while.
pub fn prepare() -> Result<()> {
    callbacks::trigger_user_inc(OMPI_CR_INC_PRE_CRS_PRE_MPI, OMPI_CR_INC_STATE_PREPARE);
    let stalled_since = Instant::now();
    loop {
        match callbacks::coord(OPAL_CRS_CHECKPOINT) {
            OPAL_EXISTS if stalled_since.elapsed() < STALL_LIMIT => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            OPAL_EXISTS => {
                return Err(Error::new(
                    OPAL_ERR_TIMEOUT,
                    "a coordination callback stayed not ready (OPAL_EXISTS) for 60 s",
                ))
            }
            OPAL_SUCCESS => break,
            rc => return Err(Error::new(rc, format!("a coordination callback failed with {rc}"))),
        }
    }
    callbacks::trigger_user_inc(OMPI_CR_INC_PRE_CRS_POST_MPI, OMPI_CR_INC_STATE_PREPARE);
    Ok(())
}

/// Phase three: the INC and coordination callbacks with the final state.
pub fn recover(crs_state: opal_crs_state_type_t) {
    let inc_state = match crs_state {
        OPAL_CRS_CONTINUE => OMPI_CR_INC_STATE_CONTINUE,
        OPAL_CRS_RESTART => OMPI_CR_INC_STATE_RESTART,
        _ => OMPI_CR_INC_STATE_ERROR,
    };
    callbacks::trigger_user_inc(OMPI_CR_INC_CRS_POST_CKPT, inc_state);
    callbacks::trigger_user_inc(OMPI_CR_INC_POST_CRS_PRE_MPI, inc_state);
    callbacks::coord(crs_state);
    callbacks::trigger_user_inc(OMPI_CR_INC_POST_CRS_POST_MPI, inc_state);
}

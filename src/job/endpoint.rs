//! The launcher as a checkpoint endpoint: it binds a control socket like any library
//! process, so `opal-checkpoint <launcher pid>` (and the launcher's checkpoint signal)
//! asks it for a checkpoint of the whole job, and it answers with the global snapshot.
//!
//! A job checkpoint (self) has two phases. First every rank is asked, over its own
//! control socket, to checkpoint into `opal_snapshot_<rank>.ckpt` inside the global
//! snapshot being written, and to hold before its continue phase (`hold`). Once every
//! rank has answered, the global snapshot is published if all succeeded, and every
//! rank then gets its go; if one failed nothing is published, all continue, and the
//! failure names the rank and its cause.

use super::global::{self, GlobalMetadata};
use crate::codes::*;
use crate::control::{self, CheckpointResult, ErrorBody, ErrorKind, Reply, Request, Status};
use crate::error::Error;
use crate::params::Params;
use crate::snapshot::{Metadata, PublishOptions, Series};
use parking_lot::{Condvar, Mutex};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connecting client has to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long a rank may take to take up the request and to publish its snapshot.
const RANK_LIMIT: Duration = Duration::from_secs(120);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

type JobResult = Result<CheckpointResult, ErrorBody>;
/// A rank asked to checkpoint and hold: the connection it answers on and the
/// checkpoint's id, or why it could not be asked.
type Held = Result<(UnixStream, u64), String>;

/// What the endpoint knows of the job.
pub struct Job {
    pub launcher_pid: i32,
    /// The PID of each rank, by rank.
    pub ranks: Vec<i32>,
    /// Where the job's global series is, and its name: where checkpoints go unless the
    /// request names another.
    pub base: PathBuf,
    pub name: String,
    pub params: Params,
}

#[derive(Default)]
struct State {
    next_id: u64,
    running: Option<u64>,
    results: Vec<(u64, JobResult)>,
    connections: usize,
    last: Option<CheckpointResult>,
}

pub struct Endpoint {
    job: Job,
    state: Mutex<State>,
    changed: Condvar,
}

impl Endpoint {
    /// Binds the launcher's control socket and serves it on a thread of its own.
    pub fn start(job: Job) -> std::io::Result<Arc<Endpoint>> {
        let (listener, _) = control::bind(job.launcher_pid)?;
        let endpoint = Arc::new(Endpoint {
            job,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let serving = endpoint.clone();
        std::thread::Builder::new()
            .name("opalcrs-job".into())
            .spawn(move || serving.serve(listener))?;
        Ok(endpoint)
    }

    fn serve(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            {
                let mut state = self.state.lock();
                if state.connections >= MAX_CONNECTIONS {
                    continue;
                }
                state.connections += 1;
            }
            let endpoint = self.clone();
            let spawned =
                std::thread::Builder::new().name("opalcrs-job-conn".into()).spawn(move || {
                    endpoint.answer(&stream);
                    endpoint.state.lock().connections -= 1;
                });
            if spawned.is_err() {
                self.state.lock().connections -= 1;
            }
        }
    }

    fn answer(self: &Arc<Self>, stream: &UnixStream) {
        // SAFETY: geteuid has no preconditions.
        let own_uid = unsafe { libc::geteuid() };
        let reply = match control::peer_cred(stream) {
            Ok(cred) if cred.uid == 0 || cred.uid == own_uid => {
                let _ = stream.set_read_timeout(Some(REQUEST_DEADLINE));
                match control::read_message::<control::RequestEnvelope>(stream) {
                    Ok(envelope) if envelope.v == control::PROTOCOL_VERSION => {
                        self.handle(envelope.request)
                    }
                    Ok(envelope) => Reply::error(
                        ErrorKind::BadRequest,
                        format!(
                            "protocol version {} not supported (this launcher speaks {})",
                            envelope.v,
                            control::PROTOCOL_VERSION
                        ),
                    ),
                    Err(e) => {
                        Reply::error(ErrorKind::BadRequest, format!("unreadable request: {e}"))
                    }
                }
            }
            Ok(cred) => Reply::error(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: uid {} may not checkpoint a job of uid {own_uid}",
                    cred.uid
                ),
            ),
            Err(e) => Reply::error(
                ErrorKind::PermissionDenied,
                format!("cannot check the peer's credentials: {e}"),
            ),
        };
        let _ = control::write_message(stream, &reply);
    }

    fn handle(self: &Arc<Self>, request: Request) -> Reply {
        match request {
            Request::Checkpoint { term, name, dir, hold, .. } => {
                if term || hold {
                    return Reply::error(
                        ErrorKind::BadRequest,
                        "a job checkpoint takes neither --term nor a hold",
                    );
                }
                match self.begin(name, dir) {
                    Ok(id) => {
                        Reply { v: control::PROTOCOL_VERSION, id: Some(id), ..Reply::default() }
                    }
                    Err(error) => Reply::error(error.kind, error.message),
                }
            }
            Request::Result { id } => {
                let mut state = self.state.lock();
                loop {
                    if let Some((_, result)) = state.results.iter().find(|(done, _)| *done == id) {
                        let mut reply = Reply {
                            v: control::PROTOCOL_VERSION,
                            id: Some(id),
                            ..Reply::default()
                        };
                        match result.clone() {
                            Ok(result) => reply.result = Some(result),
                            Err(error) => reply.error = Some(error),
                        }
                        return reply;
                    }
                    if state.running != Some(id) {
                        return Reply::error(
                            ErrorKind::UnknownId,
                            format!("no checkpoint with id {id}"),
                        );
                    }
                    self.changed.wait(&mut state);
                }
            }
            Request::Status => {
                let state = self.state.lock();
                let last = state.last.as_ref();
                Reply {
                    v: control::PROTOCOL_VERSION,
                    status: Some(Status {
                        pid: self.job.launcher_pid,
                        component: "job".into(),
                        state: if state.running.is_some() { "checkpointing" } else { "idle" }
                            .into(),
                        series: last.map(|l| l.series.clone()),
                        last_seq: last.map(|l| l.seq),
                        last_path: last.map(|l| l.path.clone()),
                    }),
                    ..Reply::default()
                }
            }
            Request::Quiet { .. } => Reply { v: control::PROTOCOL_VERSION, ..Reply::default() },
        }
    }

    /// Starts a job checkpoint on a thread of its own; its id.
    fn begin(
        self: &Arc<Self>,
        name: Option<String>,
        dir: Option<String>,
    ) -> Result<u64, ErrorBody> {
        let refused = |kind, message: &str| ErrorBody { kind, message: message.to_string() };
        if let Some(Err(bad)) = name.as_deref().map(crate::snapshot::check_series_name) {
            return Err(refused(ErrorKind::BadRequest, bad.message()));
        }
        let id = {
            let mut state = self.state.lock();
            if state.running.is_some() {
                return Err(refused(
                    ErrorKind::InProgress,
                    "a checkpoint of this job is in progress",
                ));
            }
            state.next_id += 1;
            state.running = Some(state.next_id);
            state.next_id
        };
        let endpoint = self.clone();
        let base = dir.map_or_else(|| self.job.base.clone(), PathBuf::from);
        let name = name.unwrap_or_else(|| self.job.name.clone());
        std::thread::Builder::new()
            .name("opalcrs-job-ckpt".into())
            .spawn(move || {
                let result =
                    Series::open(&base, &name).and_then(|series| endpoint.checkpoint(&series));
                endpoint.finish(id, result);
            })
            .map_err(|e| {
                self.state.lock().running = None;
                refused(ErrorKind::ComponentFailed, &format!("cannot start the checkpoint: {e}"))
            })?;
        Ok(id)
    }

    /// Takes a job checkpoint at once (the checkpoint signal); the result is logged.
    pub fn checkpoint_now(self: &Arc<Self>) {
        match self.begin(None, None) {
            Ok(_) => {}
            Err(error) => eprintln!("opal-run: warning: no job checkpoint: {}", error.message),
        }
    }

    fn finish(&self, id: u64, result: Result<CheckpointResult, Error>) {
        let wire = result.map_err(|e| {
            eprintln!("opal-run: warning: job checkpoint failed: {}", e.message());
            ErrorBody { kind: ErrorKind::ComponentFailed, message: e.message().to_string() }
        });
        let mut state = self.state.lock();
        if let Ok(result) = &wire {
            state.last = Some(result.clone());
        }
        state.results.push((id, wire));
        if state.results.len() > 32 {
            state.results.drain(..1);
        }
        state.running = None;
        self.changed.notify_all();
    }

    /// One global snapshot of every rank into `series` (self: two phases).
    fn checkpoint(&self, series: &Series) -> Result<CheckpointResult, Error> {
        let started = Instant::now();
        let millis = || started.elapsed().as_secs_f64() * 1000.0;
        let pending = series.begin(self.job.launcher_pid)?;
        let dir = pending.dir.display().to_string();

        // Phase one: every rank checkpoints into its place and holds.
        let held: Vec<(usize, Held)> = self
            .job
            .ranks
            .iter()
            .enumerate()
            .map(|(rank, &pid)| (rank, ask(rank, pid, &dir)))
            .collect();
        let running_ms = millis();
        let mut failures = Vec::new();
        let mut component = None;
        for (rank, asked) in &held {
            let outcome = match asked {
                Ok((stream, id)) => local_result(stream, self.job.ranks[*rank], *id),
                Err(why) => Err(why.clone()),
            };
            match outcome {
                Ok(result) => {
                    if component.as_ref().is_some_and(|c| *c != result.component) {
                        failures.push(format!(
                            "rank {rank}: component {}, not {} as the others",
                            result.component,
                            component.as_deref().unwrap_or_default()
                        ));
                    }
                    component.get_or_insert(result.component);
                }
                Err(why) => {
                    failures.push(format!("rank {rank} (PID {}): {why}", self.job.ranks[*rank]))
                }
            }
        }
        let finished_ms = millis();

        // Phase two: publish only a complete global snapshot; then every rank goes on.
        let published = if failures.is_empty() {
            let metadata = GlobalMetadata {
                seq: pending.seq,
                timestamp: global::timestamp_now(),
                component: component.clone().unwrap_or_default(),
                launcher_pid: self.job.launcher_pid,
                ranks: self.job.ranks.clone(),
            };
            let options = PublishOptions {
                fsync: self.job.params.bool("crs_base_snapshot_fsync"),
                keep: self.job.params.int("crs_base_snapshot_keep").max(0) as u64,
                component: component.clone().unwrap_or_default(),
                pid: self.job.launcher_pid,
                host: crate::output::hostname(),
                identity: Vec::new(),
            };
            // Also the store's own metadata, so that listing and checking treat it as
            // any snapshot; the global file tells a restart that it is a job's.
            let local = Metadata {
                pid: Some(self.job.launcher_pid),
                component: component.clone(),
                series: Some(series.path().to_path_buf()),
                seq: Some(pending.seq),
                version: Some(env!("CARGO_PKG_VERSION").to_string()),
                host: Some(crate::output::hostname()),
                ..Metadata::default()
            };
            local
                .render()
                .and_then(|text| {
                    pending.write_file(crate::snapshot::METADATA_FILE, text.as_bytes())
                })
                .and_then(|()| {
                    pending.write_file(global::GLOBAL_METADATA_FILE, metadata.render().as_bytes())
                })
                .and_then(|()| pending.publish(options))
        } else {
            pending.abandon();
            Err(Error::new(
                OPAL_ERROR,
                format!("job checkpoint failed, nothing published: {}", failures.join("; ")),
            ))
        };
        for (stream, _) in held.iter().filter_map(|(_, asked)| asked.as_ref().ok()) {
            let _ = (&*stream).write_all(b"go\n");
        }
        let published = published?;
        Ok(CheckpointResult {
            seq: published.seq,
            series: series.path().display().to_string(),
            path: published.path.display().to_string(),
            component: component.unwrap_or_default(),
            state: "continue".into(),
            running_ms,
            finished_ms,
            established_ms: millis(),
        })
    }
}

/// Asks rank `rank` to checkpoint into `dir` and hold.
fn ask(rank: usize, pid: i32, dir: &str) -> Held {
    let endpoint = control::locate(pid).map_err(|e| e.message().to_string())?;
    let stream = endpoint.connect(RANK_LIMIT).map_err(|e| format!("cannot connect: {e}"))?;
    let request = Request::Checkpoint {
        term: false,
        name: Some(global::rank_series_name(rank)),
        dir: Some(dir.to_string()),
        wait: false,
        dump_helper: None,
        hold: true,
    };
    control::write_message(
        &stream,
        &control::RequestEnvelope { v: control::PROTOCOL_VERSION, request },
    )
    .map_err(|e| format!("cannot send the request: {e}"))?;
    let reply: Reply = control::read_message(&stream).map_err(|e| format!("no answer: {e}"))?;
    if let Some(error) = reply.error {
        return Err(error.message);
    }
    match reply.id {
        Some(id) => Ok((stream, id)),
        None => Err("it accepted no checkpoint".into()),
    }
}

/// The rank's own result, sent on the held connection once its snapshot is published;
/// a rank whose checkpoint failed closes the connection, and its result (asked for
/// by `id`) says why.
fn local_result(stream: &UnixStream, pid: i32, id: u64) -> Result<CheckpointResult, String> {
    let reply = match control::read_message::<Reply>(stream) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            control::locate(pid).map_err(|e| e.message().to_string()).and_then(|endpoint| {
                endpoint
                    .call(Request::Result { id }, RANK_LIMIT)
                    .map_err(|e| format!("no result: {e}"))
            })?
        }
        Err(e) => return Err(format!("no result: {e}")),
        Ok(reply) => reply,
    };
    match reply {
        Reply { result: Some(result), .. } => Ok(result),
        Reply { error: Some(error), .. } => Err(error.message),
        _ => Err("an empty answer".into()),
    }
}

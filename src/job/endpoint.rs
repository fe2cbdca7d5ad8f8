//! The launcher as a checkpoint endpoint: it binds a control socket like any library
//! process, so `opal-checkpoint <launcher pid>` (and the launcher's checkpoint signal)
//! asks it for a checkpoint of the whole job, and it answers with the global snapshot.
//!
//! A job checkpoint goes the way of the ranks' component. self has two phases: first
//! every rank is asked, over its own control socket, to checkpoint into
//! `opal_snapshot_<rank>.ckpt` inside the global snapshot being written, and to hold
//! before its continue phase (`hold`). Once every rank has answered, the global snapshot
//! is published if all succeeded, and every rank then gets its go; if one failed nothing
//! is published, all continue, and the failure names the rank and its cause. criu: the
//! launcher dumps its own tree, the ranks with it, into the global snapshot. Across
//! nodes both go through the node agents (`agent`): criu as one image per node.

use super::global::{self, GlobalMetadata};
use crate::codes::*;
use crate::control::{self, CheckpointResult, ErrorBody, ErrorKind, Reply, Request, Status};
use crate::error::Error;
use crate::framework::CheckpointOutcome;
use crate::params::Params;
use crate::snapshot::{Metadata, PendingSnapshot, PublishOptions, Series};
use parking_lot::{Condvar, Mutex};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connecting client has to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long a rank may take to take up the request and to publish its snapshot.
const RANK_LIMIT: Duration = Duration::from_secs(120);
/// How long a rank that is busy (its socket closed for a dump) is waited for.
const BUSY_LIMIT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// How often the accepting thread looks whether it is to close the socket.
const QUIET_POLL_MS: libc::c_int = 50;
/// How long a dump waits for open connections to end.
const QUIET_LIMIT: Duration = Duration::from_secs(3);
/// How long a job to end after its checkpoint (`--term`) waits for the tool to collect
/// the result.
const TERM_LINGER: Duration = Duration::from_secs(3);

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
    /// The node agents of a job across nodes; None when the ranks are children here.
    pub agents: Option<Arc<super::agent::Agents>>,
}

struct State {
    /// The socket is to be closed (criu dump of the launcher's tree).
    quiet: bool,
    listening: bool,
    next_id: u64,
    running: Option<u64>,
    results: Vec<(u64, JobResult)>,
    connections: usize,
    last: Option<CheckpointResult>,
    /// The checkpoint after which the job ends (`--term`), and whether its result was
    /// sent to the tool.
    ending: Option<(u64, bool)>,
    /// Checkpoints asked for with `--wait` while one ran, taken in turn after it.
    queued: std::collections::VecDeque<Asked>,
}

/// A job checkpoint asked for: its id, the series (name, directory) it goes to, and
/// whether the job ends after it (`--term`).
struct Asked {
    id: u64,
    name: Option<String>,
    dir: Option<String>,
    term: bool,
}

/// Checkpoints `--wait` may queue behind a running one; more are told "in progress".
const MAX_QUEUED: usize = 8;

impl Default for State {
    fn default() -> State {
        State {
            quiet: false,
            listening: true,
            next_id: 0,
            running: None,
            results: Vec::new(),
            connections: 0,
            last: None,
            ending: None,
            queued: std::collections::VecDeque::new(),
        }
    }
}

pub struct Endpoint {
    job: Job,
    /// See [`control::overflow_uid`].
    unmapped_uid: Option<u32>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Endpoint {
    /// Binds the launcher's control socket and serves it on a thread of its own.
    pub fn start(job: Job) -> std::io::Result<Arc<Endpoint>> {
        let (listener, _) = control::bind(job.launcher_pid)?;
        let endpoint = Arc::new(Endpoint {
            job,
            unmapped_uid: control::overflow_uid(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let serving = endpoint.clone();
        std::thread::Builder::new()
            .name("opalcrs-job".into())
            .spawn(move || serving.serve(listener))?;
        Ok(endpoint)
    }

    /// Accepts connections, each served on a thread of its own. While the launcher's
    /// tree is dumped (criu) the socket is closed, and bound anew afterwards (under a
    /// new name in a restored copy, which must not answer for the original).
    fn serve(self: Arc<Self>, listener: UnixListener) {
        let mut listener = Some(listener);
        loop {
            if self.state.lock().quiet {
                drop(listener.take());
                let mut state = self.state.lock();
                state.listening = false;
                self.changed.notify_all();
                while state.quiet {
                    self.changed.wait(&mut state);
                }
                drop(state);
                match control::bind(std::process::id() as i32) {
                    Ok((bound, _)) => listener = Some(bound),
                    Err(e) => {
                        eprintln!("opal-run: warning: the job's control socket is gone: {e}");
                        return;
                    }
                }
                self.state.lock().listening = true;
                self.changed.notify_all();
            }
            let Some(open) = &listener else { return };
            let mut poll = libc::pollfd { fd: open.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; the timeout lets a quiet request be seen.
            if unsafe { libc::poll(&mut poll, 1, QUIET_POLL_MS) } <= 0 {
                continue;
            }
            let Ok((stream, _)) = open.accept() else { continue };
            {
                let mut state = self.state.lock();
                if state.connections >= MAX_CONNECTIONS || state.quiet {
                    continue;
                }
                state.connections += 1;
            }
            let endpoint = self.clone();
            let spawned =
                std::thread::Builder::new().name("opalcrs-job-conn".into()).spawn(move || {
                    endpoint.answer(&stream);
                    drop(stream);
                    let mut state = endpoint.state.lock();
                    state.connections -= 1;
                    endpoint.changed.notify_all();
                });
            if spawned.is_err() {
                self.state.lock().connections -= 1;
            }
        }
    }

    /// Closes the control socket and waits until no connection is open, so that nothing
    /// outside the tree is connected to it when it is dumped; `false` opens it again
    /// and waits until it listens (then the dump marker may go: a tool never finds the
    /// launcher neither listening nor dumping). Each wait lasts at most `QUIET_LIMIT`.
    fn quiet(&self, quiet: bool) {
        let mut state = self.state.lock();
        state.quiet = quiet;
        self.changed.notify_all();
        let until = Instant::now() + QUIET_LIMIT;
        let done = |state: &State| {
            if quiet {
                !state.listening && state.connections == 0
            } else {
                state.listening
            }
        };
        while !done(&state) {
            if self.changed.wait_until(&mut state, until).timed_out() {
                break;
            }
        }
    }

    fn answer(self: &Arc<Self>, stream: &UnixStream) {
        let reply = match control::refusal(stream, self.unmapped_uid, "a job") {
            Some(refusal) => Reply::error(ErrorKind::PermissionDenied, refusal),
            None => {
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
        };
        let sent = control::write_message(stream, &reply).is_ok();
        let mut state = self.state.lock();
        if let (Some((id, delivered)), true) = (&mut state.ending, sent) {
            if reply.id == Some(*id) && reply.result.is_some() {
                *delivered = true;
                self.changed.notify_all();
            }
        }
    }

    fn handle(self: &Arc<Self>, request: Request) -> Reply {
        match request {
            Request::Checkpoint { term, name, dir, hold, wait, .. } => {
                if hold {
                    return Reply::error(ErrorKind::BadRequest, "a job checkpoint takes no hold");
                }
                match self.begin(name, dir, term, wait) {
                    Ok(id) => {
                        Reply { v: control::PROTOCOL_VERSION, id: Some(id), ..Reply::default() }
                    }
                    Err(error) => Reply::error(error.kind, error.message),
                }
            }
            // Answered at once, empty while the checkpoint runs (the tool asks again):
            // no connection stays open while a tree is dumped.
            Request::Result { id } => {
                let state = self.state.lock();
                let mut reply =
                    Reply { v: control::PROTOCOL_VERSION, id: Some(id), ..Reply::default() };
                match state.results.iter().find(|(done, _)| *done == id) {
                    Some((_, Ok(result))) => reply.result = Some(result.clone()),
                    Some((_, Err(error))) => reply.error = Some(error.clone()),
                    None if state.running == Some(id)
                        || state.queued.iter().any(|asked| asked.id == id) => {}
                    None => {
                        return Reply::error(
                            ErrorKind::UnknownId,
                            format!("no checkpoint with id {id}"),
                        )
                    }
                }
                reply
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

    /// Starts a job checkpoint on a thread of its own, or with `wait` queues it behind
    /// the one running; its id. With `term`, the job ends once the global snapshot is
    /// published (see [`Endpoint::end_job`]).
    fn begin(
        self: &Arc<Self>,
        name: Option<String>,
        dir: Option<String>,
        term: bool,
        wait: bool,
    ) -> Result<u64, ErrorBody> {
        let refused = |kind, message: &str| ErrorBody { kind, message: message.to_string() };
        if let Some(Err(bad)) = name.as_deref().map(crate::snapshot::check_series_name) {
            return Err(refused(ErrorKind::BadRequest, bad.message()));
        }
        let asked = {
            let mut state = self.state.lock();
            if state.running.is_some() && !(wait && state.queued.len() < MAX_QUEUED) {
                return Err(refused(
                    ErrorKind::InProgress,
                    "a checkpoint of this job is in progress",
                ));
            }
            state.next_id += 1;
            let asked = Asked { id: state.next_id, name, dir, term };
            if state.running.is_some() {
                let id = asked.id;
                state.queued.push_back(asked);
                return Ok(id);
            }
            state.running = Some(asked.id);
            asked
        };
        let id = asked.id;
        let endpoint = self.clone();
        std::thread::Builder::new()
            .name("opalcrs-job-ckpt".into())
            .spawn(move || {
                let mut next = Some(asked);
                while let Some(asked) = next {
                    next = endpoint.take(asked);
                }
            })
            .map_err(|e| {
                self.state.lock().running = None;
                refused(ErrorKind::ComponentFailed, &format!("cannot start the checkpoint: {e}"))
            })?;
        Ok(id)
    }

    /// Takes the checkpoint `asked`; the next one queued, which is running from then on.
    fn take(&self, asked: Asked) -> Option<Asked> {
        let base = asked.dir.map_or_else(|| self.job.base.clone(), PathBuf::from);
        let name = asked.name.unwrap_or_else(|| self.job.name.clone());
        let mut result = Series::open(&base, &name).and_then(|series| self.checkpoint(&series));
        // A restored copy of the launcher (state "restart") goes on.
        let ending = match &mut result {
            Ok(done) if asked.term && done.state == "continue" => {
                done.state = "term".into();
                self.state.lock().ending = Some((asked.id, false));
                true
            }
            _ => false,
        };
        let next = self.finish(asked.id, result);
        if ending {
            self.end_job();
        }
        next
    }

    /// Takes a job checkpoint at once (the checkpoint signal); the result is logged.
    pub fn checkpoint_now(self: &Arc<Self>) {
        match self.begin(None, None, false, false) {
            Ok(_) => {}
            Err(error) => eprintln!("opal-run: warning: no job checkpoint: {}", error.message),
        }
    }

    /// Records a finished checkpoint; the next one queued, which is running from then
    /// on.
    fn finish(&self, id: u64, result: Result<CheckpointResult, Error>) -> Option<Asked> {
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
        let next = state.queued.pop_front();
        state.running = next.as_ref().map(|asked| asked.id);
        self.changed.notify_all();
        next
    }

    /// After a `--term` checkpoint: once the tool has its result (or after
    /// `TERM_LINGER`), every rank is killed and the launcher exits with status 0, as one
    /// process does after its `--term` checkpoint.
    fn end_job(&self) -> ! {
        let until = Instant::now() + TERM_LINGER;
        let mut state = self.state.lock();
        while !state.ending.is_some_and(|(_, delivered)| delivered) {
            if self.changed.wait_until(&mut state, until).timed_out() {
                break;
            }
        }
        eprintln!("opal-run: ending the job after its checkpoint (--term)");
        // Across nodes the ranks are not ours: the agents end them once the launcher is
        // gone.
        if self.job.agents.is_none() {
            super::launcher::end_all(&self.job.ranks, &[libc::SIGKILL]);
        }
        std::process::exit(0)
    }

    /// One global snapshot of every rank into `series`, by the ranks' component: self
    /// in two phases, criu as one image of the launcher's tree.
    fn checkpoint(&self, series: &Series) -> Result<CheckpointResult, Error> {
        // Across nodes the agents answer for their ranks: self ranks checkpoint and
        // hold, criu nodes each dump their ranks' tree (see `agent`).
        if self.job.agents.is_some() {
            return self.checkpoint_self(series);
        }
        let components = self.rank_components()?;
        match components.first().map(String::as_str) {
            Some(first) if components.iter().any(|c| c != first) => Err(Error::new(
                OPAL_ERR_NOT_SUPPORTED,
                format!(
                    "job checkpoint failed, nothing published: the ranks use different components ({})",
                    components.join(", ")
                ),
            )),
            Some("criu") => self.checkpoint_tree(series),
            _ => self.checkpoint_self(series),
        }
    }

    /// Each rank's component, asked of the rank.
    fn rank_components(&self) -> Result<Vec<String>, Error> {
        let ranks: Vec<(usize, i32)> = self.job.ranks.iter().copied().enumerate().collect();
        components_of(&ranks).map_err(|(rank, pid, why)| {
            Error::new(
                OPAL_ERROR,
                format!("job checkpoint failed, nothing published: rank {rank} (PID {pid}): {why}"),
            )
        })
    }

    /// criu: the launcher dumps its own tree, the ranks with it, at one instant, so that
    /// what connects the ranks comes back connected. The control sockets (the
    /// launcher's and the ranks') are closed meanwhile, as for any tree dump.
    fn checkpoint_tree(&self, series: &Series) -> Result<CheckpointResult, Error> {
        let started = Instant::now();
        let pending = series.begin(self.job.launcher_pid)?;
        let component = crate::framework::by_name("criu").expect("criu is a component");
        let marker = control::DumpMarker::set();
        self.quiet(true);
        // This thread ends after the dump (in a restored copy too).
        // SAFETY: gettid has no preconditions.
        control::quiet_descendants(std::process::id() as i32, Some(unsafe { libc::gettid() }));
        let running_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut metadata = Metadata {
            component: Some(component.name().to_string()),
            cwd: std::env::current_dir().ok(),
            ..Metadata::default()
        };
        let mut job = crate::framework::CheckpointJob {
            params: &self.job.params,
            dir: &pending.dir,
            metadata: &mut metadata,
            dump_helper: None,
        };
        let outcome = component.checkpoint(&mut job);
        self.quiet(false);
        drop(marker);
        let finished_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (state, published) = match outcome {
            Err(e) => {
                pending.abandon();
                return Err(e.context("job checkpoint failed, nothing published"));
            }
            // This is the restored launcher: the original published the snapshot.
            Ok(CheckpointOutcome::Restarted) => {
                let seq = pending.seq;
                std::mem::forget(pending);
                ("restart", crate::snapshot::Published { seq, path: series.snapshot_dir(seq) })
            }
            Ok(CheckpointOutcome::Continue) => {
                ("continue", self.publish(series, pending, metadata, component.identity())?)
            }
        };
        Ok(CheckpointResult {
            seq: published.seq,
            series: series.path().display().to_string(),
            path: published.path.display().to_string(),
            component: component.name().into(),
            state: state.into(),
            running_ms,
            finished_ms,
            established_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Writes the metadata (the store's own, so that listing and checking treat the
    /// global snapshot as any snapshot, and `global_snapshot_meta.data`, which tells a
    /// restart that it is a job's) and publishes the global snapshot.
    fn publish(
        &self,
        series: &Series,
        pending: PendingSnapshot,
        mut metadata: Metadata,
        identity: Vec<crate::snapshot::IdentityEntry>,
    ) -> Result<crate::snapshot::Published, Error> {
        let component = metadata.component.clone().unwrap_or_default();
        let global = GlobalMetadata {
            seq: pending.seq,
            timestamp: global::timestamp_now(),
            component: component.clone(),
            launcher_pid: self.job.launcher_pid,
            ranks: self.job.ranks.clone(),
            nodes: match &self.job.agents {
                Some(agents) if component == "criu" => agents.layout(self.job.ranks.len()),
                _ => Vec::new(),
            },
        };
        metadata.pid = Some(self.job.launcher_pid);
        metadata.series = Some(series.path().to_path_buf());
        metadata.seq = Some(pending.seq);
        metadata.version = Some(env!("CARGO_PKG_VERSION").to_string());
        metadata.host = Some(crate::output::hostname());
        let options = PublishOptions {
            fsync: self.job.params.bool("crs_base_snapshot_fsync"),
            keep: self.job.params.int("crs_base_snapshot_keep").max(0) as u64,
            component,
            pid: self.job.launcher_pid,
            host: crate::output::hostname(),
            identity,
        };
        metadata
            .render()
            .and_then(|text| pending.write_file(crate::snapshot::METADATA_FILE, text.as_bytes()))
            .and_then(|()| {
                pending.write_file(global::GLOBAL_METADATA_FILE, global.render().as_bytes())
            })
            .and_then(|()| pending.publish(options))
    }

    /// self: every rank checkpoints into its place in the global snapshot and holds;
    /// the global snapshot is published only if all succeeded; then every rank goes on.
    fn checkpoint_self(&self, series: &Series) -> Result<CheckpointResult, Error> {
        let started = Instant::now();
        let millis = || started.elapsed().as_secs_f64() * 1000.0;
        let pending = series.begin(self.job.launcher_pid)?;
        let dir = pending.dir.display().to_string();

        // Phase one: every rank checkpoints into its place and holds (through the node
        // agents for a job across nodes).
        let mut failures = Vec::new();
        let mut component: Option<String> = None;
        let (outcomes, release) = match &self.job.agents {
            Some(agents) => agents.hold(&dir),
            None => {
                let ranks: Vec<(usize, i32)> = self.job.ranks.iter().copied().enumerate().collect();
                let (outcomes, held) = hold_local(&ranks, &dir);
                (outcomes, Release::Local(held))
            }
        };
        let running_ms = millis();
        for (rank, outcome) in outcomes {
            match outcome {
                Ok(result) => {
                    if component.as_ref().is_some_and(|c| *c != result) {
                        failures.push(format!(
                            "rank {rank}: component {result}, not {} as the others",
                            component.as_deref().unwrap_or_default()
                        ));
                    }
                    component.get_or_insert(result);
                }
                Err(why) => {
                    let pid = self.job.ranks.get(rank).copied().unwrap_or_default();
                    failures.push(format!("rank {rank} (PID {pid}): {why}"))
                }
            }
        }
        let finished_ms = millis();

        // Phase two: publish only a complete global snapshot; then every rank goes on.
        let published = if failures.is_empty() {
            let component = component.clone().unwrap_or_default();
            let metadata = Metadata { component: Some(component), ..Metadata::default() };
            self.publish(series, pending, metadata, Vec::new())
        } else {
            pending.abandon();
            Err(Error::new(
                OPAL_ERROR,
                format!("job checkpoint failed, nothing published: {}", failures.join("; ")),
            ))
        };
        release.go();
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

/// Each rank's answer to phase one: its component, or why it failed.
pub(super) type Outcome = (usize, Result<String, String>);

/// What lets the held ranks go on once phase two is decided.
pub(super) enum Release {
    Local(Vec<UnixStream>),
    Agents(Vec<super::channel::Channel>),
}

impl Release {
    pub(super) fn go(self) {
        match self {
            Release::Local(held) => release_local(&held),
            Release::Agents(agents) => agents.iter().for_each(super::agent::go),
        }
    }
}

/// Phase one on this node: each of `ranks` (rank, PID) checkpoints into `dir` and holds;
/// the outcomes, and the connections of the ranks that hold.
pub(super) fn hold_local(ranks: &[(usize, i32)], dir: &str) -> (Vec<Outcome>, Vec<UnixStream>) {
    let asked: Vec<(usize, i32, Held)> =
        ranks.iter().map(|&(rank, pid)| (rank, pid, ask(rank, pid, dir))).collect();
    let mut outcomes = Vec::with_capacity(ranks.len());
    let mut held = Vec::with_capacity(ranks.len());
    for (rank, pid, asked) in asked {
        let outcome = match asked {
            Ok((stream, id)) => {
                let result = local_result(&stream, pid, id).map(|r| r.component);
                held.push(stream);
                result
            }
            Err(why) => Err(why),
        };
        outcomes.push((rank, outcome));
    }
    (outcomes, held)
}

/// The component of each of `ranks` (rank, PID), asked of the rank; or the first rank
/// that could not say, and why.
pub(super) fn components_of(ranks: &[(usize, i32)]) -> Result<Vec<String>, (usize, i32, String)> {
    let mut components = Vec::with_capacity(ranks.len());
    for &(rank, pid) in ranks {
        let failed = |why: String| (rank, pid, why);
        // A rank whose socket is closed for a dump (just after a restore of the tree it
        // is still closed for a moment) is waited for.
        let until = Instant::now() + BUSY_LIMIT;
        let endpoint = loop {
            match control::locate(pid) {
                Err(e) if e.code() == OPAL_ERR_RESOURCE_BUSY && Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                located => break located.map_err(|e| failed(e.message().into()))?,
            }
        };
        let reply = endpoint
            .call(Request::Status, RANK_LIMIT)
            .map_err(|e| failed(format!("no status: {e}")))?;
        match (reply.status, reply.error) {
            (Some(status), _) => components.push(status.component),
            (None, Some(error)) => return Err(failed(error.message)),
            (None, None) => return Err(failed("an empty status".into())),
        }
    }
    Ok(components)
}

/// Phase two on this node: every held rank goes on.
pub(super) fn release_local(held: &[UnixStream]) {
    for stream in held {
        let _ = (&*stream).write_all(b"go\n");
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

/// Asks the one-node launcher `pid` (a node agent's child, the parent of its node's
/// ranks) for a checkpoint of its tree into the series `name` in `dir`, and waits for
/// it: Ok once it is published there, or why not.
pub(super) fn checkpoint_tree_of(pid: i32, name: &str, dir: &str) -> Result<(), String> {
    let until = Instant::now() + RANK_LIMIT;
    let request = Request::Checkpoint {
        term: false,
        name: Some(name.to_string()),
        dir: Some(dir.to_string()),
        wait: false,
        dump_helper: None,
        hold: false,
    };
    let located = control::locate(pid).map_err(|e| e.message().to_string())?;
    let reply = located.call(request, RANK_LIMIT).map_err(|e| format!("cannot ask: {e}"))?;
    let id = match (reply.id, reply.error) {
        (_, Some(error)) => return Err(error.message),
        (Some(id), None) => id,
        (None, None) => return Err("it accepted no checkpoint".into()),
    };
    // Asked again until it is done; its socket is closed while the tree is dumped (a
    // connection made just before is dropped unanswered).
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        let reply = match control::locate(pid) {
            Err(e) if e.code() == OPAL_ERR_RESOURCE_BUSY => continue,
            Err(e) => return Err(e.message().to_string()),
            Ok(located) => match located.call(Request::Result { id }, RANK_LIMIT) {
                Ok(reply) => reply,
                // SAFETY: kill with signal 0 only looks whether the process exists.
                Err(_) if unsafe { libc::kill(pid, 0) } == 0 => continue,
                Err(e) => return Err(format!("no result: {e}")),
            },
        };
        match reply {
            Reply { result: Some(_), .. } => return Ok(()),
            Reply { error: Some(error), .. } => {
                let message = error.message;
                let cause = message.strip_prefix("job checkpoint failed, nothing published: ");
                return Err(cause.unwrap_or(&message).to_string());
            }
            _ => {}
        }
    }
    Err(format!("no result within {} s", RANK_LIMIT.as_secs()))
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

//! Serving checkpoint requests: the control socket, the signal doorbell, the periodic
//! interval and `opalcrs_checkpoint()`. With `opal_cr_use_thread=1` a listener thread
//! serves them and each checkpoint runs on a worker thread, so a second request is
//! answered "in progress" at once; with `0` they are served only when the program calls
//! `opal_cr_test_if_checkpoint_ready()`. Jobs run one at a time.
//!
//! No connection to a tool is open while the component runs: a tool gets an id,
//! disconnects and asks again for the result. For components that dump the whole
//! process the listener itself is closed during the dump and bound anew afterwards
//! (under a new name in a restored copy, which must not answer for the original).

use super::checkpoint::{self, Done, Origin, Outcome, Request};
use super::own_fd::{self, PublishedFd};
use super::Runtime;
use crate::control::{
    self, CheckpointResult, ErrorKind, PendingRequest, Received, Reply, Status, PROTOCOL_VERSION,
};
use crate::error::Error;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set by the signal handler; the doorbell below wakes the listener thread.
pub static SIGNAL_PENDING: AtomicBool = AtomicBool::new(false);
/// Set by the built-in notify callback: take a checkpoint with default options.
pub static SIGNAL_CHECKPOINT: AtomicBool = AtomicBool::new(false);
/// The doorbell's end that the signal handler and other threads write a byte to.
pub static WAKE_FD: PublishedFd = PublishedFd::new();
/// The doorbell's end the listener polls (for a forked child to close).
pub static WAKE_READ_FD: PublishedFd = PublishedFd::new();
/// The listening control socket, for a forked child to close.
pub static LISTENER_FD: PublishedFd = PublishedFd::new();
/// How often the listener looks whether the program closed its descriptors.
const DESCRIPTOR_CHECK: Duration = Duration::from_secs(1);

/// Exit status of a process that ends after a signal-triggered checkpoint
/// (`opal_cr_signal_exit=1`), so a job script can tell it from a finished run.
pub const EXIT_CHECKPOINTED: i32 = 85;

/// How long a process that is to end after its checkpoint waits for the tool to
/// collect the result.
const TERM_LINGER: Duration = Duration::from_secs(3);
const RESULTS_KEPT: usize = 32;
/// How long a client has for its whole request once connected: a slow or silent one
/// holds nothing up, it is only closed after this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections held at once (requests arriving, tools waiting for a result); past it
/// the oldest is closed, so no number of idle clients exhausts the descriptors.
const MAX_CONNECTIONS: usize = 64;

pub type JobResult = Result<Done, Error>;

/// Where an API caller waits for its job.
pub type ApiSlot = Arc<(Mutex<Option<JobResult>>, Condvar)>;

struct Job {
    id: u64,
    request: Request,
    api: Option<ApiSlot>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quiet {
    Open,
    CloseRequested,
    Closed,
    Reopen,
}

struct Control {
    stop: bool,
    /// The listener thread is to return its server at the next idle moment.
    pause: bool,
    submitted: Vec<(Request, ApiSlot)>,
    finished: Vec<(u64, JobResult)>,
    quiet: Quiet,
}

/// State shared between the listener thread, workers and API callers.
pub struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    fn wake(&self) {
        ring_doorbell();
    }

    /// Asks the listener thread to stop.
    pub fn stop(&self) {
        self.control.lock().stop = true;
        self.wake();
    }

    /// Asks the listener thread to end once no checkpoint is queued or running, and to
    /// hand its server (socket, connections, results) back through its join handle.
    pub fn pause(&self) {
        self.control.lock().pause = true;
        self.wake();
    }

    /// Hands a job from an API caller to the listener thread.
    pub fn submit(&self, request: Request) -> ApiSlot {
        let slot: ApiSlot = Arc::new((Mutex::new(None), Condvar::new()));
        self.control.lock().submitted.push((request, slot.clone()));
        self.wake();
        slot
    }

    /// Worker side: closes every connection of the process for the component's run.
    fn quiet_down(&self) {
        let mut control = self.control.lock();
        control.quiet = Quiet::CloseRequested;
        self.wake();
        while control.quiet != Quiet::Closed {
            self.changed.wait(&mut control);
        }
    }

    /// Worker side: returns once the listener has its socket again.
    fn reopen(&self) {
        let mut control = self.control.lock();
        control.quiet = Quiet::Reopen;
        self.changed.notify_all();
        while control.quiet != Quiet::Open {
            self.changed.wait(&mut control);
        }
    }

    fn finished(&self, id: u64, result: JobResult) {
        self.control.lock().finished.push((id, result));
        self.wake();
    }
}

pub fn wait_slot(slot: &ApiSlot) -> JobResult {
    let mut result = slot.0.lock();
    loop {
        if let Some(done) = result.take() {
            return done;
        }
        slot.1.wait(&mut result);
    }
}

/// Wakes the listener: a byte into the doorbell, if its number is still ours (a
/// program that closed it may have a file of its own there now). Async-signal-safe.
fn ring_doorbell() {
    if let Some(fd) = WAKE_FD.get() {
        // SAFETY: one byte to a non-blocking datagram socket of ours; no SIGPIPE.
        unsafe {
            libc::send(fd, [1u8].as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
    }
}

/// A socket pair the listener thread polls: the signal handler, workers and API callers
/// wake it by writing a byte to the other end. Sockets rather than an eventfd: each end
/// has an inode of its own, so a number the program closed and reused is told apart.
struct Doorbell {
    read: OwnedFd,
    write: OwnedFd,
}

impl Doorbell {
    fn new() -> std::io::Result<Doorbell> {
        let mut pair = [-1; 2];
        let kind = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socketpair fills two descriptors on success.
        if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, pair.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors we own.
        let (read, write) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let bell =
            Doorbell { read: own_fd::above_program(read), write: own_fd::above_program(write) };
        bell.publish();
        Ok(bell)
    }

    /// Makes both ends known by what they are now (again after a restore, which gives
    /// the restored sockets new inodes).
    fn publish(&self) {
        WAKE_READ_FD.publish(self.read.as_raw_fd());
        WAKE_FD.publish(self.write.as_raw_fd());
    }

    fn intact(&self) -> bool {
        WAKE_READ_FD.get().is_some() && WAKE_FD.get().is_some()
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: non-blocking reads into a buffer of its size, until it is empty.
        while unsafe {
            libc::recv(
                self.read.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
    }

    /// Closes both ends, except a number that is no longer ours.
    fn release(self) {
        for (published, fd) in [(&WAKE_FD, self.write), (&WAKE_READ_FD, self.read)] {
            if published.take().is_none() {
                std::mem::forget(fd);
            }
        }
    }
}

pub extern "C" fn on_signal(_signal: libc::c_int) {
    SIGNAL_PENDING.store(true, Ordering::SeqCst);
    ring_doorbell();
}

fn current_pid() -> i32 {
    std::process::id() as i32
}

fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

type WireResult = Result<CheckpointResult, control::ErrorBody>;

fn to_wire(result: &JobResult) -> WireResult {
    match result {
        Ok(done) => Ok(CheckpointResult {
            seq: done.seq,
            series: done.series.display().to_string(),
            path: done.path.display().to_string(),
            component: done.component.to_string(),
            state: match done.outcome {
                Outcome::Term => "term",
                Outcome::Restarted => "restart",
                Outcome::Continue => "continue",
            }
            .to_string(),
            running_ms: done.running_ms,
            finished_ms: done.finished_ms,
            established_ms: done.established_ms,
        }),
        Err(e) => Err(control::ErrorBody {
            kind: ErrorKind::ComponentFailed,
            message: e.message().to_string(),
        }),
    }
}

/// What a held checkpoint tells its launcher once its snapshot is published.
pub(super) fn held_reply(done: &Done) -> Reply {
    let wire = to_wire(&Ok(done.clone()));
    Reply { v: PROTOCOL_VERSION, result: wire.ok(), ..Reply::default() }
}

fn result_reply(id: u64, result: WireResult) -> Reply {
    match result {
        Ok(result) => {
            Reply { v: PROTOCOL_VERSION, id: Some(id), result: Some(result), ..Reply::default() }
        }
        Err(error) => {
            Reply { v: PROTOCOL_VERSION, id: Some(id), error: Some(error), ..Reply::default() }
        }
    }
}

/// The serving side of one process.
pub struct Server {
    rt: Arc<Runtime>,
    /// Always there but while being replaced.
    bell: Option<Doorbell>,
    /// The uid every user not mapped into this process's user namespace appears as
    /// (`/proc/sys/kernel/overflowuid`): such peers cannot be told apart.
    unmapped_uid: Option<u32>,
    shared: Arc<Shared>,
    listener: Option<UnixListener>,
    next_id: u64,
    queue: VecDeque<Job>,
    running: Option<(u64, Origin, Option<ApiSlot>)>,
    results: VecDeque<(u64, WireResult)>,
    /// Connections whose request has not fully arrived, oldest first.
    pending: VecDeque<PendingRequest>,
    waiters: Vec<(u64, UnixStream)>,
    next_interval: Option<Instant>,
    /// The process ends once the tool has the result of this job, or at the deadline.
    exit_after: Option<(u64, i32, Instant)>,
    /// Quiet while this ancestor dumps the tree (the listener thread meanwhile carries
    /// the dump thread name, so tools learn "in progress"; not when the process started
    /// during the dump).
    quiet_for: Option<(i32, Option<i32>, Option<control::DumpMarker>)>,
}

impl Server {
    pub fn new(rt: Arc<Runtime>) -> std::io::Result<Server> {
        let bell = Some(Doorbell::new()?);
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                stop: false,
                pause: false,
                submitted: Vec::new(),
                finished: Vec::new(),
                quiet: Quiet::Open,
            }),
            changed: Condvar::new(),
        });
        let unmapped_uid = control::overflow_uid();
        let mut server = Server {
            rt,
            bell,
            unmapped_uid,
            shared,
            listener: None,
            next_id: 1,
            queue: VecDeque::new(),
            running: None,
            results: VecDeque::new(),
            pending: VecDeque::new(),
            waiters: Vec::new(),
            next_interval: None,
            exit_after: None,
            quiet_for: None,
        };
        match control::dumping_ancestor() {
            Some(dumper) => server.quiet_for = Some((dumper, None, None)),
            None => server.open_listener()?,
        }
        server.schedule_interval();
        Ok(server)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn open_listener(&mut self) -> std::io::Result<()> {
        let (listener, name) = control::bind(current_pid())?;
        let listener = UnixListener::from(own_fd::above_program(listener.into()));
        listener.set_nonblocking(true)?;
        log::debug!(target: "cr", "cr: listening on @{name}");
        LISTENER_FD.publish(listener.as_raw_fd());
        self.listener = Some(listener);
        Ok(())
    }

    /// The listener again after a dump; the doorbell is known anew (a restored copy's
    /// sockets have new inodes).
    fn reopen_listener(&mut self) {
        if let Some(bell) = &self.bell {
            bell.publish();
        }
        if let Err(e) = self.open_listener() {
            log::error!(target: "cr", "cr: cannot reopen the control socket after the checkpoint: {e}");
        }
    }

    fn close_connections(&mut self) {
        LISTENER_FD.withdraw();
        if let Some(listener) = self.listener.take() {
            // A child stopped before its fork handlers ran still holds this socket, so
            // closing ours would leave it listening with nobody to accept: a shutdown
            // refuses new connections for every holder (the tool asks again), and the
            // ones already queued are taken and closed here.
            // SAFETY: shutdown of a socket we own.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
            while let Ok((queued, _)) = listener.accept() {
                drop(queued);
            }
        }
        self.pending.clear();
        self.waiters.clear();
    }

    fn schedule_interval(&mut self) {
        let seconds = self.rt.params.int("opal_cr_checkpoint_interval");
        self.next_interval =
            (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds as u64));
    }

    fn busy(&self) -> bool {
        self.running.is_some() || !self.queue.is_empty()
    }

    fn enqueue(&mut self, request: Request, api: Option<ApiSlot>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Job { id, request, api });
        id
    }

    /// Handles everything pending without blocking: control messages, the signal,
    /// connections and the interval. Returns false once asked to stop.
    fn absorb(&mut self) -> bool {
        self.keep_descriptors();
        if let Some(bell) = &self.bell {
            bell.drain();
        }
        let (finished, submitted, stop) = {
            let shared = self.shared.clone();
            let mut control = shared.control.lock();
            if control.quiet == Quiet::CloseRequested {
                self.close_connections();
                control.quiet = Quiet::Closed;
                shared.changed.notify_all();
                while control.quiet == Quiet::Closed {
                    shared.changed.wait(&mut control);
                }
                self.reopen_listener();
                control.quiet = Quiet::Open;
                shared.changed.notify_all();
            }
            (
                std::mem::take(&mut control.finished),
                std::mem::take(&mut control.submitted),
                control.stop,
            )
        };
        for (id, result) in finished {
            self.finish(id, result);
        }
        for (request, slot) in submitted {
            self.enqueue(request, Some(slot));
        }
        if SIGNAL_PENDING.swap(false, Ordering::SeqCst) {
            self.on_signal();
        }
        self.accept_all();
        if self.next_interval.is_some_and(|due| Instant::now() >= due) && !self.busy() {
            self.next_interval = None;
            self.enqueue(Request::default_options(Origin::Interval), None);
        }
        let dump_over = |&(dumper, until_ends, _): &(i32, Option<i32>, _)| match until_ends {
            Some(tid) => !control::thread_exists(dumper, tid),
            None => !control::being_dumped(dumper),
        };
        if self.quiet_for.as_ref().is_some_and(dump_over) {
            self.quiet_for = None;
            self.reopen_listener();
        }
        if let Some((_, status, deadline)) = self.exit_after {
            if Instant::now() >= deadline {
                end_process(status);
            }
        }
        !stop
    }

    /// A program that closed the library's descriptors (and may have its own files at
    /// their numbers now) gets nothing written to, read from or closed at them: the
    /// doorbell and the control socket are made anew, and the connections of that
    /// moment are let go without closing. Not while quiet for an ancestor's dump (a
    /// restored copy knows its doorbell again when it reopens).
    fn keep_descriptors(&mut self) {
        if self.quiet_for.is_some() {
            return;
        }
        let bell_lost = !self.bell.as_ref().is_some_and(Doorbell::intact);
        let listener_lost = self.listener.is_some() && LISTENER_FD.get().is_none();
        if !bell_lost && !listener_lost {
            return;
        }
        log::warn!(target: "cr", "cr: the program closed the library's descriptors: making new ones");
        for request in std::mem::take(&mut self.pending) {
            std::mem::forget(request.into_stream());
        }
        for (_, stream) in std::mem::take(&mut self.waiters) {
            std::mem::forget(stream);
        }
        if bell_lost {
            if let Some(old) = self.bell.take() {
                old.release();
            }
            match Doorbell::new() {
                Ok(bell) => self.bell = Some(bell),
                Err(e) => log::error!(target: "cr", "cr: no doorbell: {e}"),
            }
        }
        if listener_lost {
            LISTENER_FD.withdraw();
            std::mem::forget(self.listener.take());
            self.reopen_listener();
        }
    }

    /// The signal doorbell: tell the notify callback what state we are in; the built-in
    /// one asks for a checkpoint with default options.
    fn on_signal(&mut self) {
        use crate::codes::*;
        let state = if self.busy() {
            OPAL_CHECKPOINT_CMD_IN_PROGRESS
        } else if self.rt.component().name() == "none" {
            OPAL_CHECKPOINT_CMD_NULL
        } else {
            OPAL_CHECKPOINT_CMD_START
        };
        let notify = super::callbacks::read().notify;
        if let Some(notify) = notify {
            // SAFETY: the program's (or our) notify callback.
            unsafe { notify(state) };
        }
        if SIGNAL_CHECKPOINT.swap(false, Ordering::SeqCst) && !self.busy() {
            self.enqueue(Request::default_options(Origin::Signal), None);
        }
    }

    /// Takes the waiting connections, then serves what has arrived on any of them. At
    /// most a bound's worth per round, so that a client connecting without end cannot
    /// keep the loop from finishing jobs and answering their waiters.
    fn accept_all(&mut self) {
        for _ in 0..MAX_CONNECTIONS {
            let Some(listener) = &self.listener else { break };
            match listener.accept() {
                Ok((stream, _)) => {
                    self.admit(UnixStream::from(own_fd::above_program(stream.into())))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!(target: "cr", "cr: accept on the control socket failed: {e}");
                    break;
                }
            }
        }
        self.serve_pending();
    }

    /// A new connection of an allowed peer is served at once if its request is there
    /// (a tool sends it as it connects), else waits for it without blocking anyone.
    /// Past the bound the oldest waiting connection of the process holding the most is
    /// closed, so a process that opens connections without end only pushes out its own.
    fn admit(&mut self, stream: UnixStream) {
        if let Some(refusal) = control::refusal(&stream, self.unmapped_uid, "a process") {
            answer(&stream, &Reply::error(ErrorKind::PermissionDenied, refusal));
            return;
        }
        let peer = control::peer_cred(&stream).map_or(0, |cred| cred.pid);
        match PendingRequest::new(stream, peer, Instant::now() + REQUEST_DEADLINE) {
            Ok(request) => self.serve(request, Instant::now()),
            Err(e) => log::warn!(target: "cr", "cr: cannot serve a control connection: {e}"),
        }
        while self.pending.len() > MAX_CONNECTIONS {
            let crowding = most_connected(self.pending.iter().map(PendingRequest::peer));
            if let Some(oldest) = self.pending.iter().position(|r| Some(r.peer()) == crowding) {
                self.pending.remove(oldest);
            }
        }
        if self.waiters.len() > MAX_CONNECTIONS {
            // A tool whose wait is closed asks again.
            self.waiters.remove(0);
        }
    }

    /// Serves every connection whose request is complete; closes those past their
    /// deadline.
    fn serve_pending(&mut self) {
        let now = Instant::now();
        for request in std::mem::take(&mut self.pending) {
            self.serve(request, now);
        }
    }

    /// Answers a connection whose request is complete (or late, or bad); keeps it
    /// waiting otherwise.
    fn serve(&mut self, mut request: PendingRequest, now: Instant) {
        let reply = match request.receive() {
            Received::Partial if now < request.deadline() => {
                self.pending.push_back(request);
                return;
            }
            Received::Partial => Some(Reply::error(
                ErrorKind::BadRequest,
                format!("no complete request within {} s", REQUEST_DEADLINE.as_secs()),
            )),
            Received::Gone => None,
            Received::Request(Err(why)) => Some(Reply::error(ErrorKind::BadRequest, why)),
            Received::Request(Ok(envelope)) if envelope.v != PROTOCOL_VERSION => {
                Some(Reply::error(
                    ErrorKind::BadRequest,
                    format!(
                        "protocol version {} not supported (this process speaks {PROTOCOL_VERSION})",
                        envelope.v
                    ),
                ))
            }
            Received::Request(Ok(envelope)) => self.handle(envelope.request, request.stream()),
        };
        if let Some(reply) = reply {
            answer(request.stream(), &reply);
        }
    }

    /// Answers a request; None when the connection was parked until a result is known.
    fn handle(&mut self, request: control::Request, stream: &UnixStream) -> Option<Reply> {
        match request {
            control::Request::Checkpoint { term, name, dir, wait, dump_helper, hold } => {
                if self.rt.component().name() == "none" {
                    return Some(Reply::error(
                        ErrorKind::NotCheckpointable,
                        crate::components::none::NOT_CHECKPOINTABLE,
                    ));
                }
                if let Some(Err(bad)) = name.as_deref().map(crate::snapshot::check_series_name) {
                    return Some(Reply::error(ErrorKind::BadRequest, bad.message()));
                }
                if hold && self.rt.component().needs_quiet_connections() {
                    return Some(Reply::error(
                        ErrorKind::BadRequest,
                        "a held checkpoint needs a component that leaves the connection open (self)",
                    ));
                }
                let hold = match hold.then(|| stream.try_clone()) {
                    None => None,
                    Some(Ok(stream)) => Some(Arc::new(stream)),
                    Some(Err(e)) => {
                        return Some(Reply::error(
                            ErrorKind::BadRequest,
                            format!("cannot keep the launcher's connection: {e}"),
                        ))
                    }
                };
                if self.busy() && !wait {
                    return Some(Reply::error(
                        ErrorKind::InProgress,
                        "a checkpoint of this process is in progress",
                    ));
                }
                let request = Request {
                    term,
                    name,
                    dir: dir.map(Into::into),
                    origin: Origin::Tool,
                    run_callbacks: true,
                    dump_helper: dump_helper.map(|rendezvous| {
                        let tool = control::peer_cred(stream).map_or(0, |cred| cred.pid);
                        crate::components::criu::behalf::DumpHelper::new(rendezvous.into(), tool)
                    }),
                    hold,
                };
                let id = self.enqueue(request, None);
                Some(Reply { v: PROTOCOL_VERSION, id: Some(id), ..Reply::default() })
            }
            control::Request::Result { id } => {
                if let Some((_, result)) = self.results.iter().find(|(done, _)| *done == id) {
                    let reply = result_reply(id, result.clone());
                    if self.exit_after.is_some_and(|(exit_id, _, _)| exit_id == id) {
                        let _ = control::write_message(stream, &reply);
                        end_process(self.exit_after.map_or(0, |(_, status, _)| status));
                    }
                    return Some(reply);
                }
                let known = self.running.as_ref().is_some_and(|(running, _, _)| *running == id)
                    || self.queue.iter().any(|job| job.id == id);
                if known {
                    if let Ok(parked) = stream.try_clone() {
                        self.waiters.push((id, parked));
                    }
                    return None;
                }
                Some(Reply::error(ErrorKind::UnknownId, format!("no checkpoint with id {id}")))
            }
            control::Request::Quiet { dumper, until_ends } => {
                if self.quiet_for.is_none() {
                    self.close_connections();
                    self.quiet_for = Some((dumper, until_ends, Some(control::DumpMarker::set())));
                }
                Some(Reply { v: PROTOCOL_VERSION, ..Reply::default() })
            }
            control::Request::Status => {
                let last = self.rt.last_published();
                Some(Reply {
                    v: PROTOCOL_VERSION,
                    status: Some(Status {
                        pid: current_pid(),
                        component: self.rt.component().name().to_string(),
                        state: if self.busy() { "checkpointing" } else { "idle" }.to_string(),
                        series: last.as_ref().map(|l| l.0.display().to_string()),
                        last_seq: last.as_ref().map(|l| l.1),
                        last_path: last.as_ref().map(|l| l.2.display().to_string()),
                    }),
                    ..Reply::default()
                })
            }
        }
    }

    /// Records a finished job and answers whoever waits for it.
    fn finish(&mut self, id: u64, result: JobResult) {
        let (origin, api) = match self.running.take() {
            Some((running, origin, api)) if running == id => (origin, api),
            other => {
                self.running = other;
                (Origin::Api, None)
            }
        };
        self.schedule_interval();
        let wire = to_wire(&result);
        if let Err(e) = &wire {
            // A tool or API caller reports the failure itself; a checkpoint the signal
            // or the interval asked for has nobody else to tell.
            if matches!(origin, Origin::Signal | Origin::Interval) {
                log::warn!(target: "cr", "cr: checkpoint failed: {}", e.message);
            } else {
                log::info!(target: "cr", "cr: checkpoint failed: {}", e.message);
            }
        }
        let mut delivered = false;
        let (mine, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|(w, _)| *w == id);
        self.waiters = others;
        for (_, stream) in mine {
            delivered |= control::write_message(&stream, &result_reply(id, wire.clone())).is_ok();
        }
        self.results.push_back((id, wire));
        while self.results.len() > RESULTS_KEPT {
            self.results.pop_front();
        }
        let exit_status = match &result {
            Ok(done) if done.outcome == Outcome::Term => Some(0),
            Ok(done)
                if done.outcome == Outcome::Continue
                    && origin == Origin::Signal
                    && self.rt.params.bool("opal_cr_signal_exit") =>
            {
                Some(EXIT_CHECKPOINTED)
            }
            _ => None,
        };
        if let Some(slot) = api {
            *slot.0.lock() = Some(result);
            slot.1.notify_all();
        }
        if let Some(status) = exit_status {
            if origin != Origin::Tool || delivered {
                end_process(status);
            }
            self.exit_after = Some((id, status, Instant::now() + TERM_LINGER));
        }
    }

    /// Runs the next queued job on a worker thread (listener-thread mode).
    fn start_worker(&mut self, job: Job) {
        self.running = Some((job.id, job.request.origin, job.api));
        let (rt, shared, id, request) = (self.rt.clone(), self.shared.clone(), job.id, job.request);
        let spawned = std::thread::Builder::new().name("opalcrs-ckpt".into()).spawn(move || {
            let quiet = rt.component().needs_quiet_connections();
            // Tools that find no socket meanwhile learn "in progress" from the marker.
            let marker = quiet.then(control::DumpMarker::set);
            if quiet {
                shared.quiet_down();
                // This thread ends after the dump (in a restored copy too).
                control::quiet_descendants(current_pid(), Some(current_tid()));
            }
            let result = checkpoint::take(&rt, &request);
            if quiet {
                shared.reopen();
            }
            drop(marker);
            shared.finished(id, result);
        });
        if let Err(e) = spawned {
            self.finish(id, Err(Error::io("starting the checkpoint thread", e)));
        }
    }

    /// Runs one job on the calling thread (`opal_cr_use_thread=0`, or an API call).
    fn run_job_inline(&mut self, job: Job) {
        self.running = Some((job.id, job.request.origin, job.api));
        let quiet = self.rt.component().needs_quiet_connections();
        let marker = quiet.then(control::DumpMarker::set);
        if quiet {
            self.close_connections();
            control::quiet_descendants(current_pid(), None);
        }
        let result = checkpoint::take(&self.rt, &job.request);
        if quiet {
            self.reopen_listener();
        }
        drop(marker);
        self.finish(job.id, result);
    }

    /// One non-blocking round of serving on the caller's thread; a request waits while
    /// a critical section is open.
    pub fn serve_inline(&mut self) {
        self.absorb();
        while !super::critical::deferred() {
            let Some(job) = self.queue.pop_front() else { return };
            self.run_job_inline(job);
        }
    }

    /// Takes a checkpoint for an API caller on the calling thread (`opal_cr_use_thread=0`).
    pub fn checkpoint_inline(&mut self, request: Request) -> JobResult {
        let slot: ApiSlot = Arc::new((Mutex::new(None), Condvar::new()));
        self.absorb();
        self.enqueue(request, Some(slot.clone()));
        while let Some(job) = self.queue.pop_front() {
            self.run_job_inline(job);
        }
        wait_slot(&slot)
    }

    /// The listener thread's loop: the server back when paused, nothing when stopped.
    pub fn run(mut self) -> Option<Server> {
        while self.absorb() {
            if self.running.is_none() {
                if let Some(job) = self.queue.pop_front() {
                    self.start_worker(job);
                    continue;
                }
                let idle = self.quiet_for.is_none() && self.exit_after.is_none();
                if idle && std::mem::take(&mut self.shared.control.lock().pause) {
                    return Some(self);
                }
            }
            self.wait_for_events();
        }
        None
    }

    fn wait_for_events(&self) {
        let mut fds: Vec<libc::pollfd> = self
            .bell
            .iter()
            .map(|bell| libc::pollfd {
                fd: bell.read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let Some(listener) = &self.listener {
            fds.push(libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        fds.extend(self.pending.iter().map(|request| libc::pollfd {
            fd: request.stream().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let now = Instant::now();
        // While quiet for an ancestor's dump, look every 20 ms whether it is over.
        let quiet_check = self.quiet_for.is_some().then(|| now + Duration::from_millis(20));
        // Descriptors the program closes are not reported by poll: look now and then.
        let descriptor_check = Some(now + DESCRIPTOR_CHECK);
        let deadline =
            [self.next_interval, self.exit_after.map(|(_, _, d)| d), quiet_check, descriptor_check]
                .into_iter()
                .flatten()
                .chain(self.pending.iter().map(PendingRequest::deadline))
                .min();
        let timeout = deadline.map_or(-1, |d| {
            d.saturating_duration_since(now).as_millis().min(i32::MAX as u128) as i32 + 1
        });
        // SAFETY: fds is a valid array of pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    }
}

impl Drop for Server {
    /// Closes what is still the library's: a number the program closed and reused is
    /// left to it.
    fn drop(&mut self) {
        if self.listener.is_some() && LISTENER_FD.take().is_none() {
            std::mem::forget(self.listener.take());
        }
        if !self.bell.as_ref().is_some_and(Doorbell::intact) {
            for request in std::mem::take(&mut self.pending) {
                std::mem::forget(request.into_stream());
            }
            for (_, stream) in std::mem::take(&mut self.waiters) {
                std::mem::forget(stream);
            }
        }
        if let Some(bell) = self.bell.take() {
            bell.release();
        }
    }
}

/// The peer holding the most connections (the first of equals).
fn most_connected(peers: impl Iterator<Item = i32>) -> Option<i32> {
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for peer in peers {
        match counts.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, n)) => *n += 1,
            None => counts.push((peer, 1)),
        }
    }
    counts.iter().rev().max_by_key(|(_, n)| *n).map(|(p, _)| *p)
}

/// Replies on a non-blocking connection: a reply fits in the socket's buffer, and a
/// client that does not read it loses it.
fn answer(stream: &UnixStream, reply: &Reply) {
    let _ = control::write_message(stream, reply);
}

fn end_process(status: i32) -> ! {
    log::info!(target: "cr", "cr: ending the process after its checkpoint (exit status {status})");
    std::process::exit(status)
}

#[cfg(test)]
mod tests {
    use super::most_connected;

    #[test]
    fn the_process_holding_the_most_connections_is_found() {
        assert_eq!(most_connected([7, 9, 9, 7, 9].into_iter()), Some(9));
        assert_eq!(most_connected([5, 3, 3, 5].into_iter()), Some(5));
        assert_eq!(most_connected(std::iter::empty()), None);
    }
}

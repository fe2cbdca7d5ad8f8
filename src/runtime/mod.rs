//! The C/R runtime inside a process: `opal_init`/`opal_finalize` reference counting,
//! parameters, component selection, the restart hand-over, the signal doorbell and the
//! server that takes checkpoints (design §4).

pub mod callbacks;
mod checkpoint;
pub mod critical;
mod own_fd;
mod server;

pub use checkpoint::{Done, Origin, Outcome, Request};
pub use server::EXIT_CHECKPOINTED;

use crate::codes::*;
use crate::components::self_::{ENV_DO_RESTART, ENV_SERIES, ENV_SNAPSHOT_DIR};
use crate::error::{Error, Result};
use crate::framework::{self, Component};
use crate::params::{self, Params};
use crate::snapshot::Series;
use parking_lot::Mutex;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The live runtime of an initialised process (C/R enabled, not a tool).
pub struct Runtime {
    pub params: Params,
    /// Changes only when self becomes selectable after `opal_init` (a checkpoint
    /// callback registered late).
    component: parking_lot::RwLock<&'static dyn Component>,
    pub pid: i32,
    /// The series that default-named checkpoints go to (inherited on restart).
    series: Mutex<Option<PathBuf>>,
}

enum ServerHandle {
    Thread {
        shared: Arc<server::Shared>,
        thread: std::thread::JoinHandle<Option<server::Server>>,
    },
    /// Served by the program's own calls; never locked together with `STATE`, since
    /// callbacks run while it is held.
    Inline(Arc<Mutex<server::Server>>),
}

struct State {
    init_count: u32,
    util_count: u32,
    params: Option<Arc<Params>>,
    runtime: Option<Arc<Runtime>>,
    selected: Option<&'static dyn Component>,
    server: Option<ServerHandle>,
    signal: Option<c_int>,
}

static STATE: Mutex<State> = Mutex::new(State {
    init_count: 0,
    util_count: 0,
    params: None,
    runtime: None,
    selected: None,
    server: None,
    signal: None,
});

/// The process that initialised the runtime; a forked child differs and must not use
/// (or tear down) what it inherited.
static OWNER_PID: AtomicI32 = AtomicI32::new(0);

/// The library file when it was preloaded (LD_PRELOAD), to preload it again on restart.
static PRELOADED_FROM: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Whether a listener thread serves requests (`opal_cr_use_thread`); read on the
/// library-entry hot path, hence an atomic.
static USES_THREAD: AtomicBool = AtomicBool::new(false);

/// `opal_cr_set_enabled`: a switch on top of `ft_cr_enabled`.
static ENABLED_BY_API: AtomicBool = AtomicBool::new(true);

/// The snapshot being written, while a checkpoint runs. Kept apart from `STATE`:
/// callbacks read it, and the restart callback runs while `STATE` is held.
static CURRENT_SNAPSHOT_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// (series, seq, path) of the last snapshot published by or restored into this process.
static LAST_SNAPSHOT: Mutex<Option<(PathBuf, u64, PathBuf)>> = Mutex::new(None);

/// Where the system parameter files live, from the install prefix.
pub fn sysconfdir() -> PathBuf {
    Path::new(env!("OPALCRS_PREFIX")).join("etc")
}

/// Reads the parameters of this process from its environment and files.
pub fn load_params(cmdline: Vec<(String, String)>) -> Result<Params> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => env.push((name, value)),
            (Ok(name), Err(value)) if name.starts_with(params::ENV_PREFIX) => {
                let parameter = &name[params::ENV_PREFIX.len()..];
                return Err(Error::new(
                    OPAL_ERR_BAD_PARAM,
                    format!("bad value {value:?} for parameter {parameter} (from environment {name}): expected UTF-8 text"),
                ));
            }
            // Not text, and not one of ours: no parameter reads it.
            _ => {}
        }
    }
    let inputs = params::Inputs {
        env,
        cmdline,
        home: std::env::var_os("HOME").map(PathBuf::from),
        cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        sysconfdir: sysconfdir(),
        pkgdatadir: Path::new(env!("OPALCRS_PREFIX")).join("share/openmpi"),
    };
    let params = Params::load(&inputs)?;
    for name in params.unknown() {
        log::debug!(target: "mca", "mca: ignoring parameter {name}: not one of libopalcrs's");
    }
    Ok(params)
}

fn verbosity(params: &Params) -> i64 {
    ["crs_base_verbose", "crs_self_verbose", "crs_criu_verbose", "opal_cr_verbose"]
        .iter()
        .map(|name| params.int(name))
        .max()
        .unwrap_or(0)
}

fn util_init_locked(state: &mut State) -> Result<()> {
    if state.util_count == 0 {
        let params = load_params(Vec::new())?;
        crate::output::set_verbosity(verbosity(&params));
        state.params = Some(Arc::new(params));
    }
    state.util_count += 1;
    Ok(())
}

fn util_finalize_locked(state: &mut State) -> Result<()> {
    match state.util_count {
        0 => {
            Err(Error::new(OPAL_ERROR, "opal_finalize_util called more often than opal_init_util"))
        }
        1 => {
            state.util_count = 0;
            state.params = None;
            Ok(())
        }
        _ => {
            state.util_count -= 1;
            Ok(())
        }
    }
}

pub fn init_util() -> Result<()> {
    util_init_locked(&mut STATE.lock())
}

pub fn finalize_util() -> Result<()> {
    util_finalize_locked(&mut STATE.lock())
}

fn in_forked_child() -> bool {
    let owner = OWNER_PID.load(Ordering::SeqCst);
    owner != 0 && owner != std::process::id() as i32
}

/// In a forked child: the parent's runtime is not ours. Its threads do not exist here
/// and its sockets were closed at fork, so it is forgotten, never torn down.
fn forget_inherited(state: &mut State) {
    if in_forked_child() {
        std::mem::forget(state.server.take());
        state.runtime = None;
        state.selected = None;
        state.signal = None;
        state.init_count = 0;
        USES_THREAD.store(false, Ordering::SeqCst);
        OWNER_PID.store(0, Ordering::SeqCst);
    }
}

/// Blocks every signal in the calling thread and returns the mask it had. Every thread
/// of the library runs with all signals blocked, from its creation on (the listener and
/// the orphan watcher are created under it, the checkpoint workers inherit it): a signal
/// sent to the whole process then goes to the program's own threads only, as without
/// the library, and one the program blocks stays pending. Async-signal-safe.
pub(crate) fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset and pthread_sigmask on local sets and this thread's own mask.
    unsafe {
        let (mut all, mut before): (libc::sigset_t, libc::sigset_t) =
            (std::mem::zeroed(), std::mem::zeroed());
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        before
    }
}

/// Puts back the calling thread's mask returned by [`block_all_signals`].
/// Async-signal-safe.
pub(crate) fn restore_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: pthread_sigmask on this thread's own mask with a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// `pthread_atfork` child handler: close the parent's control socket and doorbell so
/// the child never answers for its parent. Only async-signal-safe calls.
extern "C" fn close_inherited_endpoint() {
    for fd in [&server::LISTENER_FD, &server::WAKE_FD] {
        let raw = fd.swap(-1, Ordering::SeqCst);
        if raw >= 0 {
            // SAFETY: closing a descriptor this library opened; the child never uses it again.
            unsafe { libc::close(raw) };
        }
    }
}

/// Records that the library was preloaded from `path` (set by the constructor).
pub fn set_preloaded_from(path: PathBuf) {
    *PRELOADED_FROM.lock() = Some(path);
}

pub fn preloaded_from() -> Option<PathBuf> {
    PRELOADED_FROM.lock().clone()
}

/// `opal_init`: parameters, then the C/R part.
pub fn init() -> Result<()> {
    let mut state = STATE.lock();
    forget_inherited(&mut state);
    if state.init_count > 0 {
        state.init_count += 1;
        return Ok(());
    }
    util_init_locked(&mut state)?;
    if let Err(e) = cr_init_locked(&mut state) {
        let _ = util_finalize_locked(&mut state);
        return Err(e);
    }
    state.init_count = 1;
    Ok(())
}

pub fn finalize() -> Result<()> {
    let mut state = STATE.lock();
    if in_forked_child() {
        forget_inherited(&mut state);
        return Ok(());
    }
    match state.init_count {
        0 => Err(Error::new(OPAL_ERROR, "opal_finalize called more often than opal_init")),
        1 => {
            state.init_count = 0;
            cr_finalize_locked(&mut state);
            util_finalize_locked(&mut state)
        }
        _ => {
            state.init_count -= 1;
            Ok(())
        }
    }
}

pub fn set_enabled(enabled: bool) {
    ENABLED_BY_API.store(enabled, Ordering::SeqCst);
}

pub fn is_enabled() -> bool {
    let state = STATE.lock();
    ENABLED_BY_API.load(Ordering::SeqCst)
        && state.params.as_ref().is_some_and(|p| p.bool("ft_cr_enabled"))
}

/// The component selected by `opal_init`, if any.
pub fn selected() -> Option<&'static dyn Component> {
    STATE.lock().selected
}

pub fn runtime() -> Option<Arc<Runtime>> {
    STATE.lock().runtime.clone()
}

/// The parameters of this process (after `opal_init_util`).
pub fn params() -> Option<Arc<Params>> {
    STATE.lock().params.clone()
}

fn cr_init_locked(state: &mut State) -> Result<()> {
    let params = state.params.clone().expect("parameters are loaded before the C/R part");
    if !(ENABLED_BY_API.load(Ordering::SeqCst) && params.bool("ft_cr_enabled")) {
        log::debug!(target: "cr", "cr: checkpoint/restart disabled (ft_cr_enabled=0)");
        return Ok(());
    }
    if params.bool("crs_base_do_not_select") {
        return Ok(());
    }
    let component =
        framework::select(&params).map_err(|e| e.context("opal_cr_init: opal_crs_base_select"))?;
    log::info!(target: "crs", "crs: selected component {}", component.name());

    // The restart hand-over is consumed here, so the program's children never see it.
    let inherited_series = std::env::var_os(ENV_SERIES).map(PathBuf::from);
    let restored_from = std::env::var_os(ENV_SNAPSHOT_DIR).map(PathBuf::from);
    let runtime = Arc::new(Runtime {
        params: (*params).clone(),
        component: parking_lot::RwLock::new(component),
        pid: std::process::id() as i32,
        series: Mutex::new(inherited_series.clone()),
    });
    // A rank of a job restarts without a series to continue (its own is inside the
    // global snapshot), but still learns the snapshot it restarts from.
    if let Some(dir) = &restored_from {
        let series = inherited_series.clone().or_else(|| dir.parent().map(PathBuf::from));
        let seq =
            dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(0);
        *LAST_SNAPSHOT.lock() = series.map(|series| (series, seq, dir.clone()));
    }
    component.init(&params)?;
    for name in [ENV_DO_RESTART, ENV_SERIES, ENV_SNAPSHOT_DIR] {
        std::env::remove_var(name);
    }
    state.selected = Some(component);

    if !params.bool("opal_cr_is_tool") {
        static ATFORK: std::sync::Once = std::sync::Once::new();
        // SAFETY: registering a fork handler that only closes descriptors.
        ATFORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(close_inherited_endpoint));
        });
        OWNER_PID.store(std::process::id() as i32, Ordering::SeqCst);
        let server = server::Server::new(runtime.clone())
            .map_err(|e| Error::io("opal_cr_init: opening the control socket", e))?;
        USES_THREAD.store(params.bool("opal_cr_use_thread"), Ordering::SeqCst);
        // Threads are created under a full mask: a new thread gets its creator's mask
        // when it first runs, and one the scheduler starts late took signals the program
        // had blocked since (zdtm sigpending).
        let program_mask = block_all_signals();
        let handle = if params.bool("opal_cr_use_thread") {
            start_listener(server, true)
        } else {
            reserve_checkpoint_threads(1);
            Ok(ServerHandle::Inline(Arc::new(Mutex::new(server))))
        };
        restore_signal_mask(&program_mask);
        state.server =
            Some(handle.map_err(|e| Error::io("opal_cr_init: starting the listener thread", e))?);
        state.signal = install_signal(params.int("opal_cr_signal") as c_int);
    }
    state.runtime = Some(runtime);
    Ok(())
}

/// Starts the listener thread serving `server` (call it with every signal blocked).
/// `reserve`: first make the threads and arenas a checkpoint needs (see
/// [`reserve_checkpoint_threads`]); the mappings are complete when this returns.
fn start_listener(server: server::Server, reserve: bool) -> std::io::Result<ServerHandle> {
    let shared = server.shared();
    let (ready, reserved) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name("opalcrs".into()).spawn(move || {
        if reserve {
            // Its own malloc arena first, then those of the threads it starts.
            std::hint::black_box(Box::new(0u8));
            reserve_checkpoint_threads(2);
        }
        let _ = ready.send(());
        server.run()
    });
    spawned.map(|thread| {
        let _ = reserved.recv();
        ServerHandle::Thread { shared, thread }
    })
}

/// Runs `call`, a system call the kernel allows only to a single-threaded process
/// (entering a user namespace), with the listener thread ended for its duration (once
/// no checkpoint runs) and started again after it, with the same socket and
/// connections. `call` learns whether a thread of ours was ended (it may take a moment
/// to leave the thread group).
pub fn with_listener_paused<T>(call: impl FnOnce(bool) -> T) -> T {
    let paused = {
        let mut state = STATE.lock();
        let ours = OWNER_PID.load(Ordering::SeqCst) == std::process::id() as i32;
        match state.server.take() {
            Some(ServerHandle::Thread { shared, thread })
                if ours && thread.thread().id() != std::thread::current().id() =>
            {
                Some((shared, thread))
            }
            other => {
                state.server = other;
                None
            }
        }
    };
    // The lock is not held while the listener finishes: its checkpoint may need it.
    let Some((shared, thread)) = paused else { return call(false) };
    shared.pause();
    let server = thread.join().ok().flatten();
    let result = call(true);
    if let Some(server) = server {
        let program_mask = block_all_signals();
        let started = start_listener(server, false);
        restore_signal_mask(&program_mask);
        match started {
            Ok(handle) => STATE.lock().server = Some(handle),
            Err(e) => log::error!(target: "cr", "cr: cannot start the listener thread again: {e}"),
        }
    }
    result
}

fn cr_finalize_locked(state: &mut State) {
    if let Some(signal) = state.signal.take() {
        restore_signal(signal);
    }
    match state.server.take() {
        Some(ServerHandle::Thread { shared, thread }) => {
            shared.stop();
            // The listener thread itself may be ending the process (--term) and run
            // the preload destructor: it cannot join itself.
            if thread.thread().id() == std::thread::current().id() {
                std::mem::forget(thread);
            } else {
                let _ = thread.join();
            }
        }
        Some(ServerHandle::Inline(server)) => drop(server),
        None => {}
    }
    server::WAKE_FD.store(-1, Ordering::SeqCst);
    USES_THREAD.store(false, Ordering::SeqCst);
    if let Some(component) = state.selected.take() {
        component.finalize();
    }
    state.runtime = None;
    OWNER_PID.store(0, Ordering::SeqCst);
}

/// The threads a checkpoint starts (its worker, and the worker's flusher; the flusher
/// alone without a listener thread) find a stack and a malloc arena that glibc keeps for
/// reuse, so a checkpoint leaves the process's
/// mappings as they were (it left two stacks and two arenas, 8 areas: zdtm vdso-proxy
/// allows 2, for the vDSO): `depth` threads, each started by the one before, allocate
/// once and end. glibc caches an ended thread's stack and hands its arena to the next
/// thread that allocates.
fn reserve_checkpoint_threads(depth: u32) {
    let reserve = move || {
        std::hint::black_box(Box::new(0u8));
        if depth > 1 {
            reserve_checkpoint_threads(depth - 1);
        }
    };
    if let Ok(thread) = std::thread::Builder::new().name("opalcrs-ckpt".into()).spawn(reserve) {
        let _ = thread.join();
    }
}

/// Puts back SIG_DFL, unless the program has installed its own handler since.
fn restore_signal(signal: c_int) {
    // SAFETY: querying and setting a signal disposition with valid sigaction structs.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == server::on_signal as *const () as usize
        {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Installs the doorbell handler, only where the program left the signal at SIG_DFL.
fn install_signal(signal: c_int) -> Option<c_int> {
    if signal <= 0 {
        return None;
    }
    // SAFETY: querying and setting a signal disposition with valid sigaction structs.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        // Our own handler is there already in a forked child taking over the runtime.
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
            || (old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != server::on_signal as *const () as usize)
        {
            log::info!(target: "cr", "cr: signal {signal} already handled by the program; not installing the checkpoint doorbell");
            return None;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = server::on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        (libc::sigaction(signal, &action, std::ptr::null_mut()) == 0).then_some(signal)
    }
}

/// `opal_cr_test_if_checkpoint_ready`: serves pending requests on this thread when
/// there is no listener thread.
pub fn test_if_checkpoint_ready() {
    if in_forked_child() {
        return;
    }
    let inline = match STATE.lock().server.as_ref() {
        Some(ServerHandle::Inline(server)) => server.clone(),
        _ => return,
    };
    // Busy: re-entered from a callback, or another thread is serving right now.
    let guard = inline.try_lock();
    if let Some(mut server) = guard {
        server.serve_inline();
    }
}

/// A checkpoint of the calling process (`opalcrs_checkpoint`, `opal_crs.crs_checkpoint`,
/// the INC core), served like any other request.
pub fn checkpoint_with(request: Request) -> Result<Done> {
    if in_forked_child() {
        return Err(Error::new(
            OPAL_ERR_NOT_INITIALIZED,
            "this is a forked child: call opal_init in it to make it checkpointable",
        ));
    }
    let handle =
        match STATE.lock().server.as_ref() {
            Some(ServerHandle::Inline(server)) => Ok(server.clone()),
            Some(ServerHandle::Thread { shared, .. }) => Err(shared.clone()),
            None => return Err(Error::new(
                OPAL_ERR_NOT_INITIALIZED,
                "checkpoint/restart is not active: call opal_init first (and keep ft_cr_enabled=1)",
            )),
        };
    match handle {
        Ok(inline) => {
            let mut server = inline.try_lock().ok_or_else(|| {
                Error::new(OPAL_ERR_RESOURCE_BUSY, "a checkpoint of this process is in progress")
            })?;
            server.checkpoint_inline(request)
        }
        Err(shared) => server::wait_slot(&shared.submit(request)),
    }
}

pub fn uses_thread() -> bool {
    USES_THREAD.load(Ordering::Relaxed)
}

/// `opal_cr_inc_core_prep`: the prepare phase alone.
pub fn prepare_phase() -> c_int {
    match checkpoint::prepare() {
        Ok(()) => OPAL_SUCCESS,
        Err(e) => e.code(),
    }
}

/// `opal_cr_inc_core_recover`: the continue/restart phase alone.
pub fn recover_phase(state: opal_crs_state_type_t) {
    checkpoint::recover(state)
}

/// `opal_cr_refresh_environ`: `NAME=VALUE` lines of
/// `<opal_cr_tmp_dir>/opal_cr_restart-env-<prev_pid>` into the environment, then the
/// file is removed. No file is fine.
pub fn refresh_environ(prev_pid: c_int) -> Result<()> {
    let file = tmp_dir().join(format!("opal_cr_restart-env-{prev_pid}"));
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    };
    for line in text.lines() {
        if let Some((name, value)) = line.split_once('=') {
            if !name.is_empty() {
                std::env::set_var(name, value);
            }
        }
    }
    std::fs::remove_file(&file).map_err(|e| Error::io(format!("removing {}", file.display()), e))
}

/// `opal_cr_tmp_dir`, else `$XDG_RUNTIME_DIR`, else `$TMPDIR`, else /tmp.
pub fn tmp_dir() -> PathBuf {
    let configured = params().map(|p| p.str("opal_cr_tmp_dir").to_string()).unwrap_or_default();
    [Some(configured), std::env::var("XDG_RUNTIME_DIR").ok(), std::env::var("TMPDIR").ok()]
        .into_iter()
        .flatten()
        .find(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

pub(crate) fn set_current_snapshot_dir(dir: Option<PathBuf>) {
    *CURRENT_SNAPSHOT_DIR.lock() = dir;
}

/// During a checkpoint: the directory being written; otherwise the last published one.
pub fn snapshot_dir() -> Option<PathBuf> {
    if let Some(dir) = CURRENT_SNAPSHOT_DIR.lock().clone() {
        return Some(dir);
    }
    LAST_SNAPSHOT.lock().as_ref().map(|(_, _, path)| path.clone())
}

/// Called when the program registers a self checkpoint callback: if the process is
/// running with a lower-priority component that `crs` allows self to replace, self
/// is selected from now on.
pub fn self_became_available() {
    let Some(runtime) = runtime() else { return };
    let current = runtime.component();
    if current.name() == "self" {
        return;
    }
    match framework::select(&runtime.params) {
        Ok(chosen) if chosen.name() == "self" => {
            log::info!(target: "crs", "crs: a self checkpoint callback was registered; selecting self instead of {}", current.name());
            *runtime.component.write() = chosen;
            STATE.lock().selected = Some(chosen);
        }
        _ => {}
    }
}

/// The built-in notify callback: a signal asks for a checkpoint with default options.
pub extern "C" fn builtin_notify(state: opal_cr_ckpt_cmd_state_t) -> c_int {
    if state == OPAL_CHECKPOINT_CMD_START {
        server::SIGNAL_CHECKPOINT.store(true, Ordering::SeqCst);
    }
    OPAL_SUCCESS
}

/// OPAL's own coordination step: nothing of ours needs rebuilding around a checkpoint.
pub extern "C" fn builtin_coord(_state: c_int) -> c_int {
    OPAL_SUCCESS
}

impl Runtime {
    pub fn component(&self) -> &'static dyn Component {
        *self.component.read()
    }

    /// The series a request writes to.
    fn series_for(&self, request: &Request) -> Result<Series> {
        if request.name.is_none() && request.dir.is_none() {
            if let Some(series) = self.series.lock().clone() {
                return Ok(Series::at(&series));
            }
        }
        let base = match &request.dir {
            Some(dir) => dir.clone(),
            None => snapshot_base_dir(&self.params),
        };
        let name = match &request.name {
            Some(name) => name.clone(),
            None => match self.params.str("crs_base_snapshot_name") {
                "" => format!("opal_snapshot_{}.ckpt", self.pid),
                name => name.to_string(),
            },
        };
        Series::open(&base, &name)
    }

    fn remember(&self, series: &Series, seq: u64, path: &Path, request: &Request) {
        if request.name.is_none() && request.dir.is_none() {
            *self.series.lock() = Some(series.path().to_path_buf());
        }
        *LAST_SNAPSHOT.lock() = Some((series.path().to_path_buf(), seq, path.to_path_buf()));
    }

    pub fn last_published(&self) -> Option<(PathBuf, u64, PathBuf)> {
        LAST_SNAPSHOT.lock().clone()
    }
}

/// `crs_base_snapshot_dir`, else `$HOME`, else the current directory (with a warning).
pub fn snapshot_base_dir(params: &Params) -> PathBuf {
    let configured = params.str("crs_base_snapshot_dir");
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        if writable(&home) {
            return home;
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    log::warn!(target: "crs", "crs: $HOME is unset or not writable; snapshots go to {}", cwd.display());
    cwd
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access() on a NUL-terminated path.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

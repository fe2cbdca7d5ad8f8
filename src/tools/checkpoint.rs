//! `opal-checkpoint [options] PID`: asks a process for a checkpoint and waits until
//! the snapshot is established or fails (design §7). `opal-checkpoint --list [SERIES]`
//! lists snapshots, as the original `ompi-checkpoint -l`.

use super::{parse, prefix, usage, OptionDef};
use crate::codes::*;
use crate::components::criu::behalf;
use crate::control::{self, CheckpointResult, ErrorKind, Reply, Request};
use crate::error::Error;
use std::io::Write;
use std::time::{Duration, Instant};

pub const OPTIONS: &[OptionDef] = &[
    OptionDef { names: &["h", "help"], value: None, help: "Show this help" },
    OptionDef { names: &["v", "verbose"], value: None, help: "Print progress lines on stderr" },
    OptionDef { names: &["q", "quiet"], value: None, help: "Print nothing on stderr on success" },
    OptionDef { names: &["term"], value: None, help: "End the process once its snapshot is published" },
    OptionDef { names: &["n", "name"], value: Some("NAME"), help: "Series name (default opal_snapshot_<pid>.ckpt)" },
    OptionDef { names: &["w", "where"], value: Some("DIR"), help: "Directory that holds the series (crs_base_snapshot_dir)" },
    OptionDef { names: &["json"], value: None, help: "Print one JSON object on stdout (also with --list)" },
    OptionDef { names: &["timeout"], value: Some("SEC"), help: "Give up after SEC seconds (exit 7); default: no limit" },
    OptionDef { names: &["wait"], value: None, help: "Queue behind a running checkpoint instead of failing" },
    OptionDef { names: &["status"], value: None, help: "Show the process's component, state and last snapshot" },
    OptionDef { names: &["l", "list"], value: None, help: "List each snapshot of SERIES (no PID), or of every series in -w DIR: seq, time, component, size, state" },
];

/// Linux's limit on a path, with its NUL.
const PATH_MAX: usize = 4096;

pub(crate) const EXIT_OK: i32 = 0;
pub(crate) const EXIT_USAGE: i32 = 1;
pub(crate) const EXIT_NO_PROCESS: i32 = 2;
pub(crate) const EXIT_NOT_CR: i32 = 3;
pub(crate) const EXIT_PERMISSION: i32 = 4;
pub(crate) const EXIT_IN_PROGRESS: i32 = 5;
pub(crate) const EXIT_COMPONENT: i32 = 6;
pub(crate) const EXIT_TIMEOUT: i32 = 7;

/// A failure with its exit code.
struct Failure {
    exit: i32,
    message: String,
}

impl Failure {
    fn new(exit: i32, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }

    fn from_locate(e: Error) -> Failure {
        let exit = match e.code() {
            OPAL_ERR_NOT_FOUND => EXIT_NO_PROCESS,
            OPAL_ERR_PERM => EXIT_PERMISSION,
            OPAL_ERR_RESOURCE_BUSY => EXIT_IN_PROGRESS,
            OPAL_ERR_BAD_PARAM => EXIT_USAGE,
            _ => EXIT_NOT_CR,
        };
        Failure::new(exit, e.message())
    }

    fn from_reply(error: &control::ErrorBody) -> Failure {
        let exit = match error.kind {
            ErrorKind::InProgress => EXIT_IN_PROGRESS,
            ErrorKind::NotCheckpointable => EXIT_NOT_CR,
            ErrorKind::PermissionDenied => EXIT_PERMISSION,
            ErrorKind::ComponentFailed | ErrorKind::UnknownId => EXIT_COMPONENT,
            ErrorKind::BadRequest => EXIT_USAGE,
        };
        Failure::new(exit, error.message.clone())
    }
}

struct Settings {
    pid: i32,
    verbose: bool,
    quiet: bool,
    json: bool,
    term: bool,
    wait: bool,
    name: Option<String>,
    dir: Option<String>,
    deadline: Option<Instant>,
}

pub fn main() -> i32 {
    let args = super::args();
    if let Some(status) =
        args.split_first().and_then(|(mode, rest)| crate::framework::run_helper(mode, rest))
    {
        return status;
    }
    let argv0 = std::env::args_os()
        .next()
        .map_or_else(|| "opal-checkpoint".into(), |a| a.to_string_lossy().into_owned());
    let synopsis = "opal-checkpoint [options] PID | opal-checkpoint --list [options] [SERIES]";
    let title = "Open PAL Single Process Checkpoint Tool";
    let parsed = match parse(&args, OPTIONS) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{argv0}: command line error ({e})\nType '{argv0} --help' for usage.");
            return EXIT_USAGE;
        }
    };
    if parsed.has("h") {
        print!("{}", usage(synopsis, title, OPTIONS));
        return EXIT_OK;
    }
    let json = parsed.has("json");
    if parsed.has("l") {
        return list(&parsed, json);
    }
    let pid = match parsed.operands.as_slice() {
        [] => {
            eprintln!("{argv0}: Nothing to do\nType '{argv0} --help' for usage.");
            return EXIT_USAGE;
        }
        [pid] => match pid.parse::<i32>() {
            Ok(pid) if pid > 0 => pid,
            _ => {
                return report_failure(
                    json,
                    0,
                    Failure::new(
                        EXIT_USAGE,
                        format!("invalid PID {pid:?}: expected a positive number"),
                    ),
                )
            }
        },
        more => {
            eprintln!("{argv0}: command line error (one PID expected, got {})", more.len());
            return EXIT_USAGE;
        }
    };
    // 0 or less is no limit, and so is a time beyond what the clock can count.
    let deadline = match parsed.value("timeout").map(str::parse::<f64>) {
        None => None,
        Some(Ok(seconds)) if !seconds.is_nan() => Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|t| !t.is_zero())
            .and_then(|t| Instant::now().checked_add(t)),
        Some(_) => {
            eprintln!("{argv0}: command line error (--timeout takes a number of seconds)");
            return EXIT_USAGE;
        }
    };
    // The tool's own parameters are checked like every tool's, though only
    // crs_base_snapshot_dir matters to it.
    if let Err(e) = crate::runtime::load_params(parsed.mca.clone()) {
        return report_failure(json, pid, Failure::new(EXIT_USAGE, e.message()));
    }
    // Checked here as the process would, and before a request carries it.
    if let Some(Err(e)) = parsed.value("n").map(crate::snapshot::check_series_name) {
        return report_failure(json, pid, Failure::new(EXIT_USAGE, e.message()));
    }
    // `-w` is the original's binding of crs_base_snapshot_dir; `-mca` may set it too.
    let dir = parsed
        .value("w")
        .map(str::to_string)
        .or_else(|| {
            parsed
                .mca
                .iter()
                .rev()
                .find(|(n, _)| n == "crs_base_snapshot_dir")
                .map(|(_, v)| v.clone())
        })
        .map(|d| match std::env::current_dir() {
            Ok(cwd) if !d.starts_with('/') => cwd.join(&d).display().to_string(),
            _ => d,
        });
    // PATH_MAX counts the terminating NUL.
    if let Some(dir) = dir.as_ref().filter(|d| d.len() >= PATH_MAX) {
        let start: String = dir.chars().take(32).collect();
        let message =
            format!("directory \"{start}…\" is longer than {} bytes (PATH_MAX)", PATH_MAX - 1);
        return report_failure(json, pid, Failure::new(EXIT_USAGE, message));
    }
    let settings = Settings {
        pid,
        verbose: parsed.has("v"),
        quiet: parsed.has("q") && !parsed.has("v"),
        json,
        term: parsed.has("term"),
        wait: parsed.has("wait"),
        name: parsed.value("n").map(str::to_string),
        dir,
        deadline,
    };
    let result = if parsed.has("status") { status(&settings) } else { checkpoint(&settings) };
    match result {
        Ok(()) => EXIT_OK,
        Err(failure) => report_failure(json, pid, failure),
    }
}

/// `--list [SERIES]`: the series in `-w DIR` (or `crs_base_snapshot_dir`, as the
/// process would use it), or only SERIES.
fn list(parsed: &super::Parsed, json: bool) -> i32 {
    let failed = |message: String| {
        if json {
            println!(
                "{}",
                serde_json::json!({ "version": 1, "error": { "code": EXIT_USAGE, "message": message } })
            );
        } else {
            eprintln!("opal-checkpoint: {message}");
        }
        EXIT_USAGE
    };
    let mut cmdline = parsed.mca.clone();
    if let Some(dir) = parsed.value("w") {
        cmdline.push(("crs_base_snapshot_dir".into(), dir.to_string()));
    }
    let params = match crate::runtime::load_params(cmdline) {
        Ok(params) => params,
        Err(e) => return failed(e.to_string()),
    };
    let base = crate::runtime::snapshot_base_dir(&params);
    let reference = match parsed.operands.as_slice() {
        [] => None,
        [series] => Some(series.as_str()),
        _ => return failed("--list takes at most one series".into()),
    };
    match super::restart::list(&base, reference, json) {
        Ok(()) => EXIT_OK,
        Err(e) => failed(e.to_string()),
    }
}

fn report_failure(json: bool, pid: i32, failure: Failure) -> i32 {
    if json {
        let object = serde_json::json!({
            "version": 1, "pid": pid,
            "error": { "code": failure.exit, "message": failure.message },
        });
        println!("{object}");
    } else {
        eprintln!("opal-checkpoint: {}", failure.message);
    }
    failure.exit
}

/// A request the process did not answer: in time (it serves requests only from
/// `opal_cr_test_if_checkpoint_ready()` with `opal_cr_use_thread=0`), or at all.
fn unanswered(pid: i32, error: &std::io::Error) -> Failure {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Failure::new(
            EXIT_TIMEOUT,
            format!("timed out: process {pid} did not take the request (with opal_cr_use_thread=0 it serves requests only when it calls opal_cr_test_if_checkpoint_ready)"),
        ),
        _ => Failure::new(EXIT_NOT_CR, format!("process {pid} did not answer the request: {error}")),
    }
}

fn remaining(deadline: Option<Instant>) -> Result<Duration, Failure> {
    match deadline {
        None => Ok(Duration::from_secs(3600)),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(Failure::new(EXIT_TIMEOUT, "timed out waiting for the checkpoint"))
            } else {
                Ok(left)
            }
        }
    }
}

/// The process's endpoint; with `--wait`, once its socket is back from a dump.
fn locate(settings: &Settings) -> Result<control::Endpoint, Failure> {
    let mut backoff = Duration::from_millis(1);
    loop {
        match control::locate(settings.pid) {
            Err(e) if e.code() == OPAL_ERR_RESOURCE_BUSY && settings.wait => {
                std::thread::sleep(backoff.min(remaining(settings.deadline)?));
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            located => return located.map_err(Failure::from_locate),
        }
    }
}

/// Sends one request. A connection refused or closed before the answer (the socket
/// closed for a dump meanwhile, or the connection was dropped among too many) is sent
/// again to the socket found anew, which says "in progress" while a dump lasts.
fn send(
    settings: &Settings,
    mut endpoint: control::Endpoint,
    request: Request,
) -> Result<Reply, Failure> {
    use std::io::ErrorKind::*;
    let mut attempts = 0;
    loop {
        match endpoint.call(request.clone(), remaining(settings.deadline)?) {
            Err(e)
                if attempts < 3
                    && matches!(
                        e.kind(),
                        ConnectionRefused | ConnectionReset | BrokenPipe | UnexpectedEof
                    ) =>
            {
                attempts += 1;
                endpoint = locate(settings)?;
            }
            answered => return answered.map_err(|e| unanswered(settings.pid, &e)),
        }
    }
}

fn status(settings: &Settings) -> Result<(), Failure> {
    // Nothing else can be asked while the socket is closed for a dump.
    let dumped = || control::Status {
        pid: settings.pid,
        component: "(not known while the process is dumped)".into(),
        state: "checkpointing".into(),
        series: None,
        last_seq: None,
        last_path: None,
    };
    let reply =
        match locate(settings).and_then(|endpoint| send(settings, endpoint, Request::Status)) {
            Err(failure) if failure.exit == EXIT_IN_PROGRESS => None,
            reply => Some(reply?),
        };
    let status = match reply {
        None => dumped(),
        Some(reply) => {
            if let Some(error) = &reply.error {
                return Err(Failure::from_reply(error));
            }
            reply.status.ok_or_else(|| Failure::new(EXIT_NOT_CR, "the process sent no status"))?
        }
    };
    if settings.json {
        println!("{}", serde_json::json!({ "version": 1, "status": status }));
    } else {
        println!("PID: {}", status.pid);
        println!("Component: {}", status.component);
        println!("State: {}", status.state);
        println!("Series: {}", status.series.as_deref().unwrap_or("(none yet)"));
        println!("Last Seq: {}", status.last_seq.map_or("(none)".to_string(), |s| s.to_string()));
        println!("Last Path: {}", status.last_path.as_deref().unwrap_or("(none)"));
    }
    Ok(())
}

struct Progress {
    enabled: bool,
    start: Instant,
    last: f64,
}

impl Progress {
    fn line(&mut self, at: f64, state: &str, reference: &str) {
        if self.enabled {
            eprintln!("{} [{:5.2} / {:5.2}] {state} - {reference}", prefix(), at - self.last, at);
            self.last = at;
        }
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

fn checkpoint(settings: &Settings) -> Result<(), Failure> {
    let mut progress = Progress { enabled: settings.verbose, start: Instant::now(), last: 0.0 };
    let endpoint = locate(settings)?;
    progress.line(progress.now(), "Requested", "...");
    // Privileged, we offer to dump a process that may not run CRIU itself.
    let mut offer = behalf::Offer::new(settings.pid).unwrap_or_else(|e| {
        log::debug!("no offer to dump: {e}");
        None
    });
    let request = Request::Checkpoint {
        term: settings.term,
        name: settings.name.clone(),
        dir: settings.dir.clone(),
        wait: settings.wait,
        dump_helper: offer.as_ref().map(|o| o.path().display().to_string()),
        hold: false,
    };
    let reply = send(settings, endpoint, request)?;
    if let Some(error) = &reply.error {
        return Err(Failure::from_reply(error));
    }
    let id = reply
        .id
        .ok_or_else(|| Failure::new(EXIT_COMPONENT, "the process accepted no checkpoint"))?;
    let pending_at = progress.now();
    progress.line(pending_at, "Pending", "...");

    let result = wait_for_result(settings, id, offer.as_mut())?;
    let series_name = std::path::Path::new(&result.series)
        .file_name()
        .map_or_else(|| result.series.clone(), |n| n.to_string_lossy().into_owned());
    progress.line(pending_at + result.running_ms / 1000.0, "Running", "...");
    progress.line(pending_at + result.finished_ms / 1000.0, "Locally Finished", "...");
    progress.line(
        pending_at + result.established_ms / 1000.0,
        "Checkpoint Established",
        &series_name,
    );
    let last = if result.state == "term" { "Terminated" } else { "Continuing/Recovered" };
    progress.line(progress.now(), last, &series_name);

    let elapsed_ms = progress.start.elapsed().as_secs_f64() * 1000.0;
    let mut out = std::io::stdout().lock();
    if settings.json {
        let object = serde_json::json!({
            "version": 1, "pid": settings.pid, "seq": result.seq, "series": result.series,
            "path": result.path, "component": result.component, "state": result.state,
            "elapsed_ms": (elapsed_ms * 1000.0).round() / 1000.0,
        });
        let _ = writeln!(out, "{object}");
    } else {
        let _ = writeln!(out, "Snapshot Ref.: {:3} {series_name}", result.seq);
        let _ = writeln!(out, "Snapshot Path: {}", result.path);
        if !settings.quiet {
            eprintln!("{} Local Snapshot Reference = {series_name}", prefix());
        }
    }
    Ok(())
}

/// Asks for the result of checkpoint `id` until it is known. The process closes its
/// connections while a whole-process image is taken, so a refused or dropped
/// connection means "ask again" as long as the process lives.
fn wait_for_result(
    settings: &Settings,
    id: u64,
    mut offer: Option<&mut behalf::Offer>,
) -> Result<CheckpointResult, Failure> {
    let mut backoff = Duration::from_micros(500);
    loop {
        if let Some(offer) = offer.as_deref_mut() {
            offer.serve();
        }
        let left = remaining(settings.deadline)?;
        let answer: Result<Reply, String> = match control::locate(settings.pid) {
            Ok(endpoint) => endpoint.call(Request::Result { id }, left).map_err(|e| e.to_string()),
            Err(e) if e.code() == OPAL_ERR_NOT_FOUND => {
                return Err(Failure::new(
                    EXIT_COMPONENT,
                    format!(
                        "process {} ended before reporting the result of its checkpoint",
                        settings.pid
                    ),
                ))
            }
            Err(e) => Err(e.message().to_string()),
        };
        match answer {
            Ok(reply) => {
                if let Some(error) = &reply.error {
                    return Err(Failure::from_reply(error));
                }
                if let Some(result) = reply.result {
                    return Ok(result);
                }
            }
            Err(why) => log::debug!("asking again for the result: {why}"),
        }
        match offer {
            // The process may ask the tool to dump it meanwhile: serve in between.
            Some(_) => std::thread::sleep(backoff.min(left)),
            None => control::await_dump_thread(settings.pid, backoff.min(left)),
        }
        backoff = (backoff * 2).min(Duration::from_millis(20));
    }
}

//! `opal-run [options] -- COMMAND [ARGS]`: start or restart, in one command, for batch
//! job scripts. When the series has a good snapshot, the program is restarted from the
//! newest good one, exactly as `opal-restart SERIES` does it; otherwise COMMAND is
//! executed fresh with the series name (and directory) in its environment, so that its
//! checkpoints land in that series. Either way the job script sees one process whose
//! status is the program's.
//!
//! The series is `-n NAME`, else `crs_base_snapshot_name`, else one named after the
//! Slurm job (`slurm_<job>.ckpt`, `slurm_<array job>_<task>.ckpt` in an array), which
//! stays the same when the job is requeued.
//!
//! Signals: for a fresh start and a self restart this process becomes the program
//! (exec), so a signal sent to it reaches the program. A criu restore leaves the
//! program a child of this process; then HUP, INT, QUIT, USR1, USR2, TERM and CONT
//! received here are passed on to it, so `kill -USR1 <pid of opal-run>` (a job
//! script's trap) requests its checkpoint as it would for the other two. The same
//! holds for the restored launcher of a criu job (`-np`).

use super::restart::{EXIT_CANNOT_RESTART, EXIT_NOT_FOUND, EXIT_USAGE};
use super::{parse, usage, OptionDef};
use crate::codes::*;
use crate::error::Error;
use crate::framework::RestartOutcome;
use crate::restart::{self, Step, Target};
use crate::snapshot::{self, Series};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

pub const OPTIONS: &[OptionDef] = &[
    OptionDef { names: &["h", "help"], value: None, help: "Show this help" },
    OptionDef {
        names: &["v", "verbose"],
        value: None,
        help: "Say more about what is restarted, and how",
    },
    OptionDef {
        names: &["n", "name"],
        value: Some("SERIES"),
        help:
            "Series name (default: crs_base_snapshot_name, else slurm_<job id>.ckpt in a Slurm job)",
    },
    OptionDef {
        names: &["w", "where"],
        value: Some("DIR"),
        help: "Directory that holds the series (crs_base_snapshot_dir)",
    },
    OptionDef {
        names: &["np"],
        value: Some("N"),
        help: "Start N ranks of COMMAND as one parallel job (see \"Parallel jobs\")",
    },
    OptionDef {
        names: &["node-agent"],
        value: None,
        help: "Internal: the node agent of a job across Slurm nodes, started by opal-run -np through srun",
    },
];

/// The most ranks one launcher starts.
const MAX_RANKS: usize = 4096;

const SYNOPSIS: &str =
    "opal-run [-np N] [-n SERIES] [-w DIR] [-v] [-mca NAME VALUE]... -- COMMAND [ARGS]";
const TITLE: &str = "Start COMMAND, or restart it from the newest good snapshot of SERIES";

/// The signals passed on to a restored child.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGCONT,
];

pub fn main() -> i32 {
    let args = super::args();
    let (ours, command) = split_command(&args);
    let parsed = match parse(ours, OPTIONS) {
        Ok(p) => p,
        Err(e) => return usage_error(&e.0),
    };
    if !parsed.operands.is_empty() {
        return usage_error(&format!("unexpected {:?} before the command", parsed.operands[0]));
    }
    if parsed.has("h") {
        print!("{}", usage(SYNOPSIS, TITLE, OPTIONS));
        return 0;
    }
    // A restarting job's agents get no command: their ranks' snapshots name theirs.
    if parsed.has("node-agent") {
        return match crate::runtime::load_params(parsed.mca.clone()) {
            Ok(params) => crate::job::agent::node_agent(command, &params, parsed.has("v")),
            Err(e) => fail(e, EXIT_USAGE),
        };
    }
    let Some(program) = command.first().map(|p| p.to_string_lossy()) else {
        return usage_error("no command given");
    };
    let verbose = parsed.has("v");
    crate::output::set_verbosity(if verbose { 1 } else { 0 });

    // -w as an absolute path: the program may change its directory.
    let dir = match parsed.value("w").map(absolute) {
        None => None,
        Some(Ok(dir)) => Some(dir),
        Some(Err(e)) => return fail(e, EXIT_USAGE),
    };
    let size = match parsed.value("np").map(ranks) {
        None => None,
        Some(Ok(size)) => Some(size),
        Some(Err(why)) => return usage_error(&why),
    };
    let mut cmdline = parsed.mca.clone();
    if let Some(dir) = &dir {
        cmdline.push(("crs_base_snapshot_dir".into(), dir.display().to_string()));
    }
    let params = match crate::runtime::load_params(cmdline) {
        Ok(p) => p,
        Err(e) => return fail(e, EXIT_USAGE),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let named_series = series_name(parsed.value("n"), params.str("crs_base_snapshot_name"), env);
    // A job's default series is new with each launcher: nothing to say about it.
    let named = named_series.is_some();
    let name = match named_series {
        Some(name) => name,
        None if size.is_some() => {
            crate::job::global::default_series_name(std::process::id() as i32)
        }
        None => return usage_error(
            "no series: give -n SERIES (or set crs_base_snapshot_name, or run inside a Slurm job)",
        ),
    };
    if let Err(e) = snapshot::check_series_name(&name) {
        return fail(e, EXIT_USAGE);
    }
    let base = crate::runtime::snapshot_base_dir(&params);
    if let Some(size) = size {
        let series = Series::at(&base.join(&name));
        match published(&series) {
            Ok(false) => {
                if named {
                    eprintln!(
                        "opal-run: no snapshot in series {}: starting {size} ranks of {program} fresh",
                        series.path().display()
                    );
                }
            }
            Ok(true) => {
                let target = Target { reference: name.clone(), base: base.clone(), seq: None };
                match crate::job::choose(&target) {
                    Ok(chosen) => {
                        // A restored criu launcher is our child: signals go on to it.
                        let criu = chosen.1.component == "criu";
                        if criu {
                            install_forwarding();
                        }
                        return super::restart::restart_job(
                            "opal-run",
                            chosen,
                            &params,
                            verbose,
                            Some(size),
                            &fail,
                            criu.then_some(&wait_restored),
                        );
                    }
                    // Global snapshots, but none that verifies: start over, as one program.
                    Err(e) if e.code() == OPAL_ERR_NOT_FOUND => {
                        eprintln!("opal-run: warning: {e}");
                        eprintln!(
                            "opal-run: no good snapshot in series {}: starting {size} ranks of {program} fresh",
                            series.path().display()
                        );
                    }
                    Err(e) => return fail(e, EXIT_USAGE),
                }
            }
            Err(e) => return fail(e, EXIT_USAGE),
        }
        let options = crate::job::JobOptions {
            size,
            command: command.to_vec(),
            mca: parsed.mca.clone(),
            dir,
            base,
            name,
            params,
        };
        return match crate::job::launch(&options) {
            Ok(status) => status,
            Err(e) => start_failed(&command[0], &e),
        };
    }
    let series = Series::at(&base.join(&name));

    match published(&series) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "opal-run: no snapshot in series {}: starting {program} fresh",
                series.path().display()
            );
            return start_fresh(command, &name, dir.as_deref(), &parsed.mca);
        }
        Err(e) => return fail(e, EXIT_USAGE),
    }
    let target = Target { reference: name.clone(), base, seq: None };
    let announce = &mut |prepared: &restart::Prepared| {
        for (skipped, why) in &prepared.skipped {
            eprintln!("opal-run: skipping snapshot {skipped}: {why}");
        }
        eprintln!(
            "opal-run: restarting from snapshot {} of series {} (component {})",
            prepared.plan.seq.map_or_else(|| "-".to_string(), |seq| seq.to_string()),
            series.path().display(),
            prepared.component.name()
        );
        // self replaces this process (exec); the others restore a child, which we wait
        // for and pass signals to.
        let as_child = prepared.component.name() != "self";
        if as_child {
            install_forwarding();
        }
        as_child
    };
    match restart::run(&target, &params, verbose, announce) {
        Ok(RestartOutcome::Spawned { pid, note }) => wait_restored(pid, note),
        Ok(RestartOutcome::Exited(status)) => status,
        Ok(RestartOutcome::Rejected(why)) => fail(Error::msg(why), EXIT_CANNOT_RESTART),
        // Snapshots, but none that verifies: the work so far is lost, start over.
        Err((Step::Choose, e)) if e.code() == OPAL_ERR_NOT_FOUND => {
            eprintln!("opal-run: warning: {e}");
            eprintln!(
                "opal-run: no good snapshot in series {}: starting {program} fresh",
                series.path().display()
            );
            start_fresh(command, &name, dir.as_deref(), &parsed.mca)
        }
        Err((Step::Choose, e)) => fail(e, EXIT_USAGE),
        Err((Step::Start, e)) if e.code() == OPAL_ERR_NOT_FOUND => fail(e, EXIT_NOT_FOUND),
        Err((Step::Start, e)) => fail(e, EXIT_CANNOT_RESTART),
    }
}

/// Passes signals on to the restored child `pid` and waits for it: its status.
fn wait_restored(pid: i32, note: Option<String>) -> i32 {
    if let Some(note) = note {
        eprintln!("opal-run: {note}");
    }
    forward_to(pid);
    match wait_for(pid) {
        Ok(status) => status,
        Err(e) => {
            fail(Error::io(format!("waiting for restored process {pid}"), e), EXIT_CANNOT_RESTART)
        }
    }
}

fn usage_error(message: &str) -> i32 {
    eprintln!("opal-run: command line error ({message})\nType 'opal-run --help' for usage.");
    EXIT_USAGE
}

fn fail(e: Error, exit: i32) -> i32 {
    eprintln!("opal-run: {e}");
    exit
}

fn absolute(dir: &str) -> Result<PathBuf, Error> {
    let path = PathBuf::from(dir);
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::io(format!("-w {dir}: the current directory"), e))?;
    Ok(cwd.join(path))
}

/// Splits the arguments into ours and the command: the command starts after `--`, or
/// at the first word that is neither an option nor an option's value, so that
/// `opal-run -n s prog -v` does not take the program's `-v` for its own.
fn split_command(args: &[OsString]) -> (&[OsString], &[OsString]) {
    let mut i = 0;
    while i < args.len() {
        // Bytes that are not text never name one of our options; parse() refuses them.
        let arg = args[i].to_string_lossy();
        if arg == "--" {
            return (&args[..i], &args[i + 1..]);
        }
        let Some(name) =
            arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|n| !n.is_empty())
        else {
            return (&args[..i], &args[i..]);
        };
        let (name, inline) = match name.split_once('=') {
            Some((name, _)) => (name, 1),
            None => (name, 0),
        };
        let values: usize = match name {
            "mca" | "gmca" => 2,
            "am" => 1,
            _ => OPTIONS
                .iter()
                .find(|o| o.names.contains(&name))
                .map_or(0, |o| usize::from(o.value.is_some())),
        };
        i += 1 + values.saturating_sub(inline);
    }
    (&args[..args.len().min(i)], &[])
}

/// The series name: `-n`, else `crs_base_snapshot_name`, else the Slurm job's
/// (`SLURM_ARRAY_JOB_ID`/`SLURM_ARRAY_TASK_ID` in an array, else `SLURM_JOB_ID`), which
/// a requeued job keeps.
fn series_name(
    option: Option<&str>,
    parameter: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if let Some(name) = option {
        return Some(name.to_string());
    }
    if !parameter.is_empty() {
        return Some(parameter.to_string());
    }
    if let (Some(job), Some(task)) = (env("SLURM_ARRAY_JOB_ID"), env("SLURM_ARRAY_TASK_ID")) {
        return Some(format!("slurm_{job}_{task}.ckpt"));
    }
    env("SLURM_JOB_ID").map(|job| format!("slurm_{job}.ckpt"))
}

/// Whether the series has any published snapshot (good or not); a missing series has none.
fn published(series: &Series) -> Result<bool, Error> {
    match std::fs::metadata(series.path()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(Error::io(format!("cannot use series {}", series.path().display()), e))
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::new(
                OPAL_ERR_BAD_PARAM,
                format!("series {} is not a directory", series.path().display()),
            ))
        }
        Ok(_) => {}
    }
    Ok(!series.snapshots()?.is_empty())
}

/// The environment a fresh start adds: the series, the directory when given, and the
/// `-mca` parameters, as `OMPI_MCA_` variables.
fn fresh_environment(
    name: &str,
    dir: Option<&Path>,
    mca: &[(String, String)],
) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> =
        mca.iter().map(|(k, v)| (format!("OMPI_MCA_{k}"), v.into())).collect();
    env.push(("OMPI_MCA_crs_base_snapshot_name".into(), name.into()));
    if let Some(dir) = dir {
        env.push(("OMPI_MCA_crs_base_snapshot_dir".into(), dir.as_os_str().to_owned()));
    }
    env
}

/// Replaces this process with the command; returns only when that fails.
fn start_fresh(argv: &[OsString], name: &str, dir: Option<&Path>, mca: &[(String, String)]) -> i32 {
    let error = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .envs(fresh_environment(name, dir, mca))
        .exec();
    start_failed(&argv[0], &error)
}

fn start_failed(program: &OsString, error: &std::io::Error) -> i32 {
    eprintln!("opal-run: cannot execute {program:?}: {error}");
    if error.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RESTART
    }
}

/// The `-np` value: a number of ranks from 1 to [`MAX_RANKS`].
fn ranks(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_RANKS).contains(&n) => Ok(n),
        _ => Err(format!("-np takes a number of ranks from 1 to {MAX_RANKS}, not {value:?}")),
    }
}

/// PID that received signals are passed on to; 0 while it is not known yet.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Signals received and not yet passed on, one bit per signal number.
static PENDING: AtomicU64 = AtomicU64::new(0);

fn pass_on_pending() {
    let target = TARGET.load(Ordering::SeqCst);
    if target <= 0 {
        return;
    }
    let pending = PENDING.swap(0, Ordering::SeqCst);
    for signal in 1..64 {
        if pending & (1 << signal) != 0 {
            // SAFETY: kill is async-signal-safe; target is the restored child.
            unsafe { libc::kill(target, signal) };
        }
    }
}

extern "C" fn on_forwarded(signal: libc::c_int) {
    PENDING.fetch_or(1 << signal, Ordering::SeqCst);
    pass_on_pending();
}

/// Catches the forwarded signals; until the child is known they are only noted. The
/// handlers restart interrupted system calls, so the restore is not disturbed, and exec
/// (criu swrk) resets them.
fn install_forwarding() {
    for &signal in FORWARDED {
        // SAFETY: installing a handler that only uses atomics and kill().
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_forwarded as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// From now on signals go to `pid`, and those that came during the restore go now.
fn forward_to(pid: i32) {
    TARGET.store(pid, Ordering::SeqCst);
    pass_on_pending();
}

/// Waits for the restored process: its status (code, or 128+N for signal N). It is our
/// child, or, restored into a fresh PID namespace, the grandchild of a holder process
/// that ends with its status; so every child is reaped, and the status is the
/// process's own if it was ours, else that of the last child to end.
fn wait_for(pid: i32) -> std::io::Result<i32> {
    let mut last = None;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return last.ok_or(err),
                _ => return Err(err),
            }
        }
        let code = exit_code(status);
        if reaped == pid {
            TARGET.store(0, Ordering::SeqCst);
            return Ok(code);
        }
        last = Some(code);
    }
}

fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_CANNOT_RESTART
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_series_name_comes_from_the_option_the_parameter_or_the_slurm_job() {
        let slurm = env_of(&[("SLURM_JOB_ID", "812")]);
        assert_eq!(series_name(Some("mine"), "param", &slurm).as_deref(), Some("mine"));
        assert_eq!(series_name(None, "param", &slurm).as_deref(), Some("param"));
        assert_eq!(series_name(None, "", &slurm).as_deref(), Some("slurm_812.ckpt"));
        let array = env_of(&[
            ("SLURM_JOB_ID", "815"),
            ("SLURM_ARRAY_JOB_ID", "812"),
            ("SLURM_ARRAY_TASK_ID", "3"),
        ]);
        assert_eq!(series_name(None, "", &array).as_deref(), Some("slurm_812_3.ckpt"));
        assert_eq!(series_name(None, "", env_of(&[])), None);
    }

    #[test]
    fn a_fresh_start_gets_the_series_the_directory_and_the_parameters() {
        let env = fresh_environment(
            "s",
            Some(Path::new("/ckpt")),
            &[("opal_cr_signal_exit".into(), "1".into())],
        );
        let expected: Vec<(String, OsString)> = vec![
            ("OMPI_MCA_opal_cr_signal_exit".into(), "1".into()),
            ("OMPI_MCA_crs_base_snapshot_name".into(), "s".into()),
            ("OMPI_MCA_crs_base_snapshot_dir".into(), "/ckpt".into()),
        ];
        assert_eq!(env, expected);
        assert_eq!(fresh_environment("s", None, &[]).len(), 1);
    }

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_parse_and_the_command_keeps_its_own() {
        let args = words(&["-n", "s", "-w", "/d", "-mca", "x", "1", "--", "prog", "-n", "7"]);
        let (ours, command) = split_command(&args);
        assert_eq!(command, words(&["prog", "-n", "7"]));
        let parsed = parse(ours, OPTIONS).unwrap();
        assert_eq!((parsed.value("n"), parsed.value("w")), (Some("s"), Some("/d")));
        assert_eq!(parsed.mca, [("x".to_string(), "1".to_string())]);
        assert!(parsed.operands.is_empty());
        // Without --, the command starts at the first word that is not ours.
        let args =
            words(&["--name=s", "-v", "-mca", "x", "1", "-am", "f", "prog", "-v", "--", "x"]);
        let (ours, command) = split_command(&args);
        assert_eq!((ours.len(), command), (7, &words(&["prog", "-v", "--", "x"])[..]));
        let args = words(&["-n", "s"]);
        assert_eq!(split_command(&args), (&args[..], &[][..]));
        // An option whose value is missing is left for parse() to report.
        let args = words(&["-n"]);
        assert_eq!(split_command(&args).0.len(), 1);
        assert!(parse(split_command(&args).0, OPTIONS).is_err());
    }

    #[test]
    fn a_missing_series_has_nothing_published() {
        let base = std::env::temp_dir().join(format!("opalcrs-run-test-{}", std::process::id()));
        assert!(!published(&Series::at(&base.join("none"))).unwrap());
        std::fs::create_dir_all(base.join("empty/7")).unwrap();
        std::fs::create_dir_all(base.join("empty/.tmp-8-1-x")).unwrap();
        assert!(published(&Series::at(&base.join("empty"))).unwrap());
        std::fs::write(base.join("file"), b"").unwrap();
        assert!(published(&Series::at(&base.join("file"))).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

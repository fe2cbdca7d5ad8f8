//! Real programs that know nothing of the library, started unmodified with it preloaded
//! (crs=criu), checkpointed in the middle of their work, killed and restored: what each
//! produces must be byte-identical to an uninterrupted run of the same command. Each
//! test prints its checkpoint and restore times (`-- --nocapture` shows them).

mod common;
use common::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Each program works for 2-6 s alone; the machines these run on are shared.
const LONG: Duration = Duration::from_secs(60);

/// Debian's python3 itself: a wrapper script found first in PATH (pyenv's shim) would
/// take the preload and exec python3 without it.
const PYTHON3: &str = "/usr/bin/python3";

/// STEPS steps of PER_STEP chained SHA-256 hashes: a line after each step, then the
/// result.
const PYTHON_LOOP: &str = r#"
import hashlib, sys
steps, per_step = int(sys.argv[1]), int(sys.argv[2])
digest = b"opalcrs"
for step in range(steps):
    for i in range(per_step):
        digest = hashlib.sha256(digest + i.to_bytes(4, "little")).digest()
    print("step", step, digest.hex(), flush=True)
print("result", digest.hex())
"#;
const PYTHON_STEPS: u64 = 40;

/// The OpenMP program's steps and items per step, and its threads.
const OMP_STEPS: u64 = 40;
const OMP_ITEMS: &str = "2000000";
const OMP_THREADS: &str = "4";

/// Bytes through the pipeline.
const PIPELINE_BYTES: u64 = 800_000_000;

fn omp_checksum() -> PathBuf {
    cc_without_library("omp_checksum.c", "omp-checksum", &["-fopenmp"])
}

/// `command` with the library preloaded and the criu component chosen.
fn preloaded(mut command: Command) -> Command {
    command.env("LD_PRELOAD", lib_dir().join("libopalcrs.so")).env("OMPI_MCA_crs", "criu");
    command
}

/// Starts `command` in a session of its own, its stdout truncated and written from the
/// start as the shell's `>` does (not appended), its stderr into `<stdout>.err`.
fn start(sb: &Sandbox, mut command: Command, stdout: &Path) -> Child {
    command
        .stdout(File::create(stdout).unwrap())
        .stderr(File::create(stdout.with_extension("err")).unwrap());
    let program = command.get_program().to_owned();
    sb.spawn_in_session(command).unwrap_or_else(|e| {
        panic!("starting {program:?}: {e} (scripts/install-deps.sh installs it)")
    })
}

/// SIGKILLs the process group our child leads (the tree it started), reaps the child and
/// waits until every process of the tree has left /proc, so that the restore finds the
/// tree's PIDs free.
fn kill_tree(child: &mut Child) {
    let members = process_tree(child.id());
    // SAFETY: kill of the process group of a child this test started in its own session.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    kill_and_reap(child);
    let gone =
        wait_until(LONG, || members.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists()));
    assert!(gone, "the killed tree {members:?} is still in /proc");
}

/// Waits until the tool restoring a program (`opal-restart`, `opal-run`) has a
/// descendant that runs `exe` and is not held stopped (its snapshot's check passed);
/// returns the time since `since`, or None when the tool ended first.
fn restored_within(tool: &mut Child, exe: &Path, since: Instant) -> Option<Duration> {
    let tool_pid = tool.id();
    let running = || {
        process_tree(tool_pid).into_iter().skip(1).any(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
                && proc_status(pid, "State").is_some_and(|s| !s.starts_with('T'))
        })
    };
    wait_until(LONG, || running() || tool.try_wait().unwrap().is_some());
    running().then(|| since.elapsed())
}

/// Where two outputs part: line counts, and the first line that differs in each.
fn difference(got: &str, expected: &str) -> String {
    let (got, expected): (Vec<&str>, Vec<&str>) =
        (got.lines().collect(), expected.lines().collect());
    let first = got
        .iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    format!(
        "{} lines instead of {}; line {} is {:?} instead of {:?}",
        got.len(),
        expected.len(),
        first + 1,
        got.get(first),
        expected.get(first)
    )
}

/// Progress of a program that prints a "step " line per step and then a "result " line.
fn steps_done(output: &[u8], steps: u64) -> u64 {
    let lines = output.split(|&b| b == b'\n');
    if lines.clone().any(|line| line.starts_with(b"result ")) {
        return steps;
    }
    lines.filter(|line| line.starts_with(b"step ")).count() as u64
}

/// What a program has done, out of `total`; `total` once it has printed its result.
type Progress<'a> = &'a dyn Fn(u32, &[u8]) -> u64;

/// Runs `command` twice at once: as it is, to the end (the reference), and with the
/// library preloaded; checkpoints the second once a tenth of its work is done, checks
/// that the checkpoint ended before the work did, lets it work on a little, kills its
/// whole tree, restores it with `opal-restart`, which must exit 0 with it. Both runs'
/// stdout must be the same bytes.
fn restores_byte_identical(
    sb: &Sandbox,
    name: &str,
    command: &dyn Fn() -> Command,
    total: u64,
    progress: Progress,
) {
    let mut reference = start(sb, command(), &sb.path("reference.out"));
    let out = sb.path("preloaded.out");
    let mut original = start(sb, preloaded(command()), &out);
    let pid = original.id();
    let done = || progress(pid, &std::fs::read(&out).unwrap_or_default());
    let begun = wait_until(LONG, || done() >= total / 10);
    assert!(begun, "{name} did not get going: {}", sb.read("preloaded.err"));

    let clock = Instant::now();
    let (_, snapshot) = checkpoint_ok(sb, &[&pid.to_string()]);
    let checkpoint = clock.elapsed();
    let at_checkpoint = done();
    assert!(
        at_checkpoint < total && alive(pid),
        "{name} finished ({at_checkpoint} of {total}) before its checkpoint did: nothing to restore in the middle"
    );
    // It runs on past the checkpoint, as a job does until it is killed.
    let ran_on = wait_until(LONG, || done() > at_checkpoint);
    let at_kill = done();
    assert!(ran_on && at_kill < total, "{name} at {at_kill} of {total} when killed");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    kill_tree(&mut original);

    let clock = Instant::now();
    let mut restart = sb.command(restart_tool());
    restart.arg(&snapshot);
    let mut restart = start(sb, restart, &sb.path("restart.out"));
    let restore = restored_within(&mut restart, &exe, clock);
    let status = wait_exit(&mut restart, LONG).expect("the restored program did not end");
    let notes = sb.read("restart.err");
    assert!(
        restore.is_some() && status.success(),
        "opal-restart (restored: {restore:?}): {status:?}\n{notes}{}",
        sb.read("preloaded.err")
    );
    let status = wait_exit(&mut reference, LONG).expect("the uninterrupted run did not end");
    assert!(status.success(), "uninterrupted {name}: {status:?} {}", sb.read("reference.err"));

    let expected =
        String::from_utf8_lossy(&std::fs::read(sb.path("reference.out")).unwrap()).into_owned();
    let got = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned();
    assert!(
        got == expected,
        "{name} restored from {at_checkpoint} of {total} does not give the uninterrupted result: {}\n\
         opal-restart: {notes}\nstderr: {}",
        difference(&got, &expected),
        sb.read("preloaded.err")
    );
    eprintln!(
        "{name}: checkpoint at {at_checkpoint}/{total} took {:.2} s, restore {:.2} s{}",
        checkpoint.as_secs_f64(),
        restore.unwrap().as_secs_f64(),
        if notes.trim().is_empty() { String::new() } else { format!(" ({})", notes.trim()) }
    );
}

#[test]
fn a_python3_loop_printing_to_a_file() {
    require_criu!();
    let sb = Sandbox::new("real-python");
    let command = || {
        let mut command = sb.command(PYTHON3);
        command.args(["-c", PYTHON_LOOP, &PYTHON_STEPS.to_string(), "100000"]);
        command
    };
    restores_byte_identical(&sb, "python3", &command, PYTHON_STEPS, &|_, out| {
        steps_done(out, PYTHON_STEPS)
    });
}

#[test]
fn an_openmp_program_printing_to_a_file() {
    require_criu!();
    let sb = Sandbox::new("real-openmp");
    let exe = omp_checksum();
    let command = || {
        let mut command = sb.command(&exe);
        command.args([&OMP_STEPS.to_string(), OMP_ITEMS]).env("OMP_NUM_THREADS", OMP_THREADS);
        command
    };
    restores_byte_identical(&sb, "OpenMP", &command, OMP_STEPS, &|_, out| {
        steps_done(out, OMP_STEPS)
    });
}

/// Bytes sha256sum has read so far in the tree under `root`; all of them once it has
/// printed its sum.
fn sha256sum_progress(root: u32, output: &[u8]) -> u64 {
    if !output.is_empty() {
        return PIPELINE_BYTES;
    }
    let reader = process_tree(root).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sha256sum")
    });
    let io = reader.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok());
    io.as_deref()
        .and_then(|io| io.lines().find_map(|l| l.strip_prefix("rchar: ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_shell_pipeline_tree() {
    require_criu!();
    let sb = Sandbox::new("real-pipeline");
    let script = format!("yes 0123456789abcdef | head -c {PIPELINE_BYTES} | sha256sum");
    let command = || {
        let mut command = sb.command("bash");
        command.args(["-c", &script]);
        command
    };
    restores_byte_identical(&sb, "bash pipeline", &command, PIPELINE_BYTES, &sha256sum_progress);
}

/// A batch job's way: `opal-run` starts the OpenMP program, which writes its own output
/// file; the program is checkpointed in the middle and killed; the job's second run of
/// the same `opal-run` line restores it, waits for it and exits with its status. The
/// output file must be byte-identical to an uninterrupted run's.
#[test]
fn opal_run_restarts_an_openmp_program_writing_its_own_file() {
    require_criu!();
    let sb = Sandbox::new("real-opal-run");
    let exe = omp_checksum();
    let (reference, result) = (sb.path("reference.txt"), sb.path("result.txt"));
    let program = |out: &Path| {
        let mut command = sb.command(&exe);
        command.args([&OMP_STEPS.to_string(), OMP_ITEMS]).arg(out);
        command.env("OMP_NUM_THREADS", OMP_THREADS);
        command
    };
    let job = || {
        let program = program(&result);
        let mut command = sb.command(env!("CARGO_BIN_EXE_opal-run"));
        command.args(["-n", "job", "--"]).arg(program.get_program()).args(program.get_args());
        command.env("OMP_NUM_THREADS", OMP_THREADS);
        preloaded(command)
    };
    let mut uninterrupted = start(&sb, program(&reference), &sb.path("reference.log"));
    let mut first = start(&sb, job(), &sb.path("run1.log"));
    let pid = first.id();
    let done = || steps_done(&std::fs::read(&result).unwrap_or_default(), OMP_STEPS);
    assert!(wait_until(LONG, || done() >= OMP_STEPS / 10), "{}", sb.read("run1.err"));

    let clock = Instant::now();
    let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    let checkpoint = clock.elapsed();
    assert_eq!(snapshot, sb.path("job").join("0"), "not in the series opal-run named");
    let at_checkpoint = done();
    let ran_on = wait_until(LONG, || done() > at_checkpoint);
    let at_kill = done();
    assert!(ran_on && at_kill < OMP_STEPS, "at {at_kill} of {OMP_STEPS} when killed");
    kill_tree(&mut first);

    let clock = Instant::now();
    let mut second = start(&sb, job(), &sb.path("run2.log"));
    let restore = restored_within(&mut second, &exe, clock);
    let status = wait_exit(&mut second, LONG).expect("the second opal-run did not end");
    let said = sb.read("run2.err");
    assert!(
        restore.is_some() && status.success(),
        "second opal-run (restored: {restore:?}): {status:?}\n{said}"
    );
    assert!(said.contains("opal-run: restarting from snapshot 0 of series"), "{said}");
    assert!(wait_exit(&mut uninterrupted, LONG).is_some_and(|s| s.success()));
    let expected = std::fs::read_to_string(&reference).unwrap();
    let got = std::fs::read_to_string(&result).unwrap();
    assert!(
        got == expected,
        "restored from {at_checkpoint} of {OMP_STEPS}: {}\n{said}",
        difference(&got, &expected)
    );
    eprintln!(
        "opal-run OpenMP: checkpoint at {at_checkpoint}/{OMP_STEPS} took {:.2} s, restore {:.2} s",
        checkpoint.as_secs_f64(),
        restore.unwrap().as_secs_f64()
    );
}

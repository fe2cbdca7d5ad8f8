//! Files are restored as they were at the checkpoint: unmodified programs (`xz`, with
//! the library preloaded) checkpointed through CRIU in the middle of their work, let
//! run on, killed and restored give a result byte-identical to an uninterrupted run;
//! a file that grew after the checkpoint is cut back (an `O_APPEND` log keeps its new
//! lines), and one that shrank, was replaced or is missing is refused with its name.
//! Every test needs root and CRIU >= 4; without them it says why and passes.

mod common;
use common::*;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// Some MiB of text that `xz -9` compresses slowly enough (about 2 MB/s here) to be
/// caught in the middle.
fn make_input(sb: &Sandbox, name: &str) -> PathBuf {
    let path = sb.path(name);
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 6000000 /dev/urandom | base64 > '{}'", path.display()))
        .status()
        .unwrap();
    assert!(made.success(), "making {}", path.display());
    path
}

/// `xz ARGS` with the library preloaded and criu selected, in a session of its own,
/// with stdin, stdout and stderr as given.
fn spawn_xz(sb: &Sandbox, args: &[&str], stdin: Stdio, stdout: Stdio) -> Child {
    let mut command = sb.command("xz");
    command
        .args(args)
        .env("LD_PRELOAD", lib_dir().join("libopalcrs.so"))
        .env("OMPI_MCA_crs", "criu")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::from(File::create(sb.path("xz.err")).unwrap()));
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command.spawn().expect("spawning xz");
    sb.adopt(child.id());
    child
}

/// The uninterrupted run to compare with, started at once: `xz -9 -T1 < input`.
fn reference(sb: &Sandbox, input: &Path) -> Child {
    Command::new("xz")
        .args(["-9", "-T1"])
        .stdin(File::open(input).unwrap())
        .stdout(File::create(sb.path("reference.xz")).unwrap())
        .spawn()
        .unwrap()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until `path` holds more than `bytes`.
fn grows_past(path: &Path, bytes: u64, what: &str) {
    let grew = wait_until(LONG, || size(path) > bytes);
    assert!(grew, "{what}: {} stayed at {} bytes", path.display(), size(path));
}

/// Waits until a restored (not our child) process has ended.
fn wait_gone(pid: u32) {
    let gone = wait_until(Duration::from_secs(120), || !alive(pid));
    assert!(gone, "restored process {pid} did not finish");
}

/// The result equals the uninterrupted run's, and `xz -t` finds it sound.
fn assert_identical(result: &Path, reference: &Path) {
    let tested = Command::new("xz").arg("-t").arg(result).output().unwrap();
    assert!(
        tested.status.success(),
        "xz -t {}: {}",
        result.display(),
        String::from_utf8_lossy(&tested.stderr)
    );
    let same = Command::new("cmp").arg(result).arg(reference).status().unwrap();
    assert!(same.success(), "{} differs from the uninterrupted run", result.display());
}

fn series(pid: u32) -> String {
    format!("opal_snapshot_{pid}.ckpt")
}

/// Checkpoints `pid`, returning the time it took.
fn timed_checkpoint(sb: &Sandbox, pid: u32) -> Duration {
    let started = Instant::now();
    checkpoint_ok(sb, &[&pid.to_string()]);
    started.elapsed()
}

#[test]
fn xz_with_stdin_and_stdout_in_regular_files_restores_at_their_offsets() {
    require_criu!();
    let sb = Sandbox::new("files-xz-stdio");
    let input = make_input(&sb, "in.txt");
    let mut uninterrupted = reference(&sb, &input);
    let out = sb.path("out.xz");
    let mut xz = spawn_xz(
        &sb,
        &["-9", "-T1"],
        Stdio::from(File::open(&input).unwrap()),
        Stdio::from(File::create(&out).unwrap()),
    );
    let pid = xz.id();
    grows_past(&out, 200_000, "xz did not start writing");
    let took = timed_checkpoint(&sb, pid);
    let at_checkpoint = size(&out);
    grows_past(&out, at_checkpoint + 100_000, "xz did not go on after the checkpoint");
    kill_and_reap(&mut xz);

    let started = Instant::now();
    let (restored, stderr) = restart_fork(&sb, &[&series(pid)]);
    eprintln!(
        "xz <in >out: checkpoint {:.2} s, restore {:.2} s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    wait_gone(restored);
    assert!(uninterrupted.wait().unwrap().success());
    assert_identical(&out, &sb.path("reference.xz"));
    assert!(
        stderr.contains("cut ") && stderr.contains("out.xz"),
        "no line about the cut: {stderr}"
    );
}

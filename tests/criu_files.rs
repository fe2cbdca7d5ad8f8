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
    sb.spawn_in_session(command).expect("spawning xz")
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

/// `xz -9 -T1 <in.txt >out.xz`, checkpointed in the middle, left to write on, killed;
/// with the uninterrupted run beside it. Returns its PID, the checkpoint's time, the
/// uninterrupted run and out.xz.
fn xz_stdio_checkpointed_and_killed(sb: &Sandbox) -> (u32, Duration, Child, PathBuf) {
    let input = make_input(sb, "in.txt");
    let uninterrupted = reference(sb, &input);
    let out = sb.path("out.xz");
    let mut xz = spawn_xz(
        sb,
        &["-9", "-T1"],
        Stdio::from(File::open(&input).unwrap()),
        Stdio::from(File::create(&out).unwrap()),
    );
    let pid = xz.id();
    grows_past(&out, 200_000, "xz did not start writing");
    let took = timed_checkpoint(sb, pid);
    grows_past(&out, size(&out) + 100_000, "xz did not go on after the checkpoint");
    kill_and_reap(&mut xz);
    (pid, took, uninterrupted, out)
}

#[test]
fn xz_with_stdin_and_stdout_in_regular_files_restores_at_their_offsets() {
    require_criu!();
    let sb = Sandbox::new("files-xz-stdio");
    let (pid, took, mut uninterrupted, out) = xz_stdio_checkpointed_and_killed(&sb);

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

#[test]
fn xz_writing_its_own_output_file_is_cut_back_and_finishes_identical() {
    require_criu!();
    let sb = Sandbox::new("files-xz-k");
    let input = make_input(&sb, "in.txt");
    let mut uninterrupted = reference(&sb, &input);
    let out = sb.path("in.txt.xz");
    let mut xz = spawn_xz(
        &sb,
        &["-9", "-T1", "-k", &input.display().to_string()],
        Stdio::null(),
        Stdio::from(File::create(sb.path("xz.out")).unwrap()),
    );
    let pid = xz.id();
    grows_past(&out, 200_000, "xz did not start writing");
    let took = timed_checkpoint(&sb, pid);
    let at_checkpoint = size(&out);
    grows_past(&out, at_checkpoint + 100_000, "xz did not go on after the checkpoint");
    let at_kill = size(&out);
    kill_and_reap(&mut xz);

    // Restored as opal-restart's child, waited for: its exit status is xz's.
    let started = Instant::now();
    let (status, stdout, stderr) = run_restart(&sb, &[&series(pid)]);
    eprintln!(
        "xz -k in: checkpoint {:.2} s, restore and rest of the run {:.2} s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "opal-restart: {status:?}\n{stdout}{stderr}");
    let cut: Vec<&str> = stderr.lines().filter(|l| l.contains(" cut ")).collect();
    assert_eq!(cut.len(), 1, "one line about the cut expected: {stderr}");
    assert!(
        cut[0].starts_with(&format!("opal-restart: cut {} back from {at_kill} to ", out.display()))
            && cut[0].ends_with(" bytes (written after the checkpoint)"),
        "{stderr}"
    );
    assert!(uninterrupted.wait().unwrap().success());
    assert_identical(&out, &sb.path("reference.xz"));
}

#[test]
fn xz_restored_into_a_fresh_pid_namespace_finishes_identical() {
    require_criu!();
    let sb = Sandbox::new("files-xz-pidns");
    let (pid, took, mut uninterrupted, out) = xz_stdio_checkpointed_and_killed(&sb);

    let started = Instant::now();
    let (restored, stderr) = restart_fork(&sb, &["-mca", "crs_criu_pidns", "always", &series(pid)]);
    eprintln!(
        "xz <in >out, new PID namespace: checkpoint {:.2} s, restore {:.2} s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(stderr.contains("new PID namespace"), "{stderr}");
    assert!(stderr.contains(&format!("cut {} back", out.display())), "{stderr}");
    wait_gone(restored);
    assert!(uninterrupted.wait().unwrap().success());
    assert_identical(&out, &sb.path("reference.xz"));
}

/// criu_stdout_counter (linked with the library, criu selected) with its count file
/// (which it opens `O_APPEND`) and its stdout (not append) in the sandbox; checkpointed
/// once after two counts, then left to run until both files grew, and killed.
/// Returns its PID and the size of stdout at the checkpoint.
fn counter_checkpointed_and_killed(sb: &Sandbox) -> (u32, u64) {
    let program = cc("criu_stdout_counter.c", "criu_stdout_counter", &[]);
    let mut command = sb.command(program);
    command
        .arg(sb.path("count"))
        .env("OMPI_MCA_crs", "criu")
        .stdout(Stdio::from(File::create(sb.path("stdout.txt")).unwrap()))
        .stderr(Stdio::from(File::create(sb.path("stderr.txt")).unwrap()));
    let mut app = sb.spawn_in_session(command).unwrap();
    let pid = app.id();
    let counting = wait_until(LONG, || sb.read("count").lines().count() >= 2);
    assert!(counting, "the counter does not count: {}", sb.read("stderr.txt"));
    checkpoint_ok(sb, &[&pid.to_string()]);
    let at_checkpoint = size(&sb.path("stdout.txt"));
    grows_past(&sb.path("stdout.txt"), at_checkpoint + 30, "stdout after the checkpoint");
    kill_and_reap(&mut app);
    (pid, at_checkpoint)
}

#[test]
fn an_append_only_log_keeps_what_was_added_after_the_checkpoint() {
    require_criu!();
    let sb = Sandbox::new("files-append");
    let (pid, stdout_at_checkpoint) = counter_checkpointed_and_killed(&sb);
    let marker = "job killed: node failure, restarting";
    writeln!(File::options().append(true).open(sb.path("count")).unwrap(), "{marker}").unwrap();
    let before_restore = sb.read("count");
    let stdout_at_kill = size(&sb.path("stdout.txt"));

    let (restored, stderr) = restart_fork(&sb, &[&series(pid)]);
    assert_eq!(restored, pid);
    let count = sb.path("count");
    assert!(!stderr.contains(&format!("cut {} ", count.display())), "{stderr}");
    let stdout = sb.path("stdout.txt");
    // CRIU recorded the size when it froze the counter, before the tool returned.
    let prefix = format!("cut {} back from {stdout_at_kill} to ", stdout.display());
    let recorded: u64 = stderr
        .split_once(&prefix)
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no line about cutting stdout.txt: {stderr}"));
    assert!(recorded > 0 && recorded <= stdout_at_checkpoint, "{stderr}");
    let appended = wait_until(LONG, || sb.read("count").len() > before_restore.len() + 20);
    assert!(appended, "the restored counter does not append");
    kill(restored);
    let log = sb.read("count");
    assert!(log.starts_with(&before_restore), "the log lost what was added: {log}");
    let after: Vec<&str> = log[before_restore.len()..].lines().collect();
    assert!(after.iter().all(|l| l.ends_with(&format!(" {pid} ok"))), "{after:?}");
    // Standard output goes on where it was at the checkpoint: no gap, no repeat.
    let printed = sb.read("stdout.txt");
    let numbers: Vec<u64> = printed
        .split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n')?.strip_prefix("stdout ")?.parse().ok())
        .collect();
    assert!(numbers.len() > 3, "{printed:?}");
    assert!(numbers.iter().enumerate().all(|(i, &n)| n == i as u64 + 1), "{printed:?}");
}

/// `opal-restart SERIES ARGS` that must be refused with 126 and a message with `what`.
fn refused(sb: &Sandbox, pid: u32, args: &[&str], what: &str) {
    let mut all = args.to_vec();
    let series = series(pid);
    all.push(&series);
    let started = Instant::now();
    let (status, stdout, stderr) = run_restart(sb, &all);
    assert_eq!(status.code(), Some(126), "{all:?} not refused: {stdout}{stderr}");
    assert!(stderr.contains(what), "{all:?}: expected {what:?} in: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "slow refusal");
    assert!(!alive(pid), "a refused restore left process {pid}");
}

#[test]
fn a_file_missing_replaced_shrunk_or_grown_with_cutting_off_is_refused_by_name() {
    require_criu!();
    let sb = Sandbox::new("files-refused");
    let (pid, _) = counter_checkpointed_and_killed(&sb);
    let stdout = sb.path("stdout.txt");
    let kept = sb.path("stdout.kept");
    std::fs::hard_link(&stdout, &kept).unwrap();
    let name = stdout.display().to_string();

    std::fs::remove_file(&stdout).unwrap();
    refused(&sb, pid, &[], &format!("{name} is missing"));

    std::fs::copy(&kept, &stdout).unwrap();
    refused(&sb, pid, &[], &format!("{name} was replaced since the checkpoint"));
    std::fs::rename(&kept, &stdout).unwrap();

    let grown = size(&stdout);
    refused(
        &sb,
        pid,
        &["-mca", "crs_criu_truncate_grown", "0"],
        &format!("{name} grew since the checkpoint"),
    );
    assert_eq!(size(&stdout), grown, "a refused restore changed the file");

    let (ino, _) = (std::fs::metadata(&stdout).unwrap().ino(), ());
    File::options().write(true).open(&stdout).unwrap().set_len(3).unwrap();
    assert_eq!(std::fs::metadata(&stdout).unwrap().ino(), ino);
    refused(&sb, pid, &[], &format!("{name} shrank since the checkpoint"));
}

#[test]
fn root_cuts_a_users_grown_file_back_only_as_that_user() {
    require_criu!();
    let Some(user) = TempUser::create("files") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("files-owner");
    let home = user.home_in(&sb);
    let program = cc("criu_stdout_counter.c", "criu_stdout_counter", &[]);
    let program = sb.copy_program(&program, "criu_stdout_counter");
    sb.copy_program(&lib_dir().join("libopalcrs.so"), "libopalcrs.so.0");
    let stdout = home.join("stdout.txt");
    // The user's shell opens its stdout and stderr: files of the user's.
    let shell =
        format!("exec \"$@\" > '{}' 2>> '{}'", stdout.display(), home.join("err").display());
    let mut as_user = user.command(&sb, "sh", &home);
    as_user
        .args(["-c", &shell, "sh"])
        .arg(&program)
        .arg(home.join("count"))
        .env("OMPI_MCA_crs", "criu")
        .env("LD_LIBRARY_PATH", &sb.dir)
        .env("TMPDIR", &home);
    let mut app = sb.spawn(as_user, "app");
    let pid = app.id();
    let counting = wait_until(LONG, || size(&stdout) > 20);
    assert!(counting, "the user's counter does not print: {}", sb.read("app.out"));
    let (_, snapshot) = checkpoint_ok(&sb, &["--timeout", "30", &pid.to_string()]);
    let series = snapshot.parent().unwrap().display().to_string();
    let at_checkpoint = size(&stdout);
    grows_past(&stdout, at_checkpoint + 30, "stdout after the checkpoint");
    kill_and_reap(&mut app);
    let at_kill = size(&stdout);

    // The user may not write the file (root could): the cut, done as the user, fails.
    std::fs::set_permissions(&stdout, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let (status, out, err) = run_restart(&sb, &["--fork", &series]);
    assert_eq!(status.code(), Some(126), "{out}{err}");
    assert!(
        err.contains(&format!("cannot cut {} back from {at_kill} to ", stdout.display()))
            && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(size(&stdout), at_kill, "the file was changed");

    std::fs::set_permissions(&stdout, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (restored, err) = restart_fork(&sb, &[&series]);
    assert!(err.contains(&format!("cut {} back from {at_kill} to ", stdout.display())), "{err}");
    assert_eq!(
        proc_status(restored, "Uid").unwrap().split_whitespace().next(),
        Some(&*user.uid.to_string())
    );
    let printed = || std::fs::read_to_string(&stdout).unwrap_or_default();
    assert!(wait_until(LONG, || printed().len() as u64 > at_kill + 20), "{}", printed());
    kill(restored);
    let numbers: Vec<u64> = printed()
        .split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n')?.strip_prefix("stdout ")?.parse().ok())
        .collect();
    assert!(numbers.iter().enumerate().all(|(i, &n)| n == i as u64 + 1), "{}", printed());
}

#[test]
fn a_file_a_child_of_the_checkpointed_process_writes_is_restored_too() {
    require_criu!();
    let sb = Sandbox::new("files-tree");
    let input = make_input(&sb, "in.txt");
    let mut uninterrupted = reference(&sb, &input);
    let out = sb.path("out.xz");
    // The preloaded shell is the checkpointed process; xz, its child, has out.xz open.
    let script =
        format!("xz -9 -T1 < '{}' > '{}'; echo \"xz said $?\"", input.display(), out.display());
    let mut command = sb.command("sh");
    command
        .args(["-c", &script])
        .env("LD_PRELOAD", lib_dir().join("libopalcrs.so"))
        .env("OMPI_MCA_crs", "criu");
    let mut shell = sb.spawn(command, "shell");
    let pid = shell.id();
    grows_past(&out, 200_000, "xz did not start writing");
    let took = timed_checkpoint(&sb, pid);
    grows_past(&out, size(&out) + 100_000, "xz did not go on after the checkpoint");
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let xz: Vec<u32> = children.split_whitespace().map(|c| c.parse().unwrap()).collect();
    assert_eq!(xz.len(), 1, "the shell's children: {children:?}");
    kill(xz[0]);
    kill_and_reap(&mut shell);
    let gone =
        wait_until(Duration::from_secs(10), || !Path::new(&format!("/proc/{}", xz[0])).exists());
    assert!(gone, "xz {} is still there", xz[0]);

    let started = Instant::now();
    let (restored, stderr) = restart_fork(&sb, &[&series(pid)]);
    eprintln!(
        "sh -c 'xz <in >out': checkpoint {:.2} s, restore {:.2} s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(stderr.contains(&format!("cut {} back", out.display())), "{stderr}");
    wait_gone(restored);
    assert!(sb.read("shell.out").ends_with("xz said 0\n"), "{}", sb.read("shell.out"));
    assert!(uninterrupted.wait().unwrap().success());
    assert_identical(&out, &sb.path("reference.xz"));
}

#[test]
fn a_record_of_open_files_changed_in_the_snapshot_is_damage_and_the_older_one_restores() {
    require_criu!();
    let sb = Sandbox::new("files-record");
    let (pid, _) = counter_checkpointed_and_killed(&sb);
    let series = sb.path(&series(pid));
    // A second snapshot of the same run: restore the first, checkpoint it again, kill.
    let (restored, _) = restart_fork(&sb, &[series.to_str().unwrap()]);
    checkpoint_ok(&sb, &[&restored.to_string()]);
    kill(restored);
    assert!(wait_until(LONG, || !Path::new(&format!("/proc/{restored}")).exists()));
    let record = series.join("1").join("open-files.json");
    let text = std::fs::read_to_string(&record).unwrap();
    // One digit of a recorded size, changed in place (the size of the file stays).
    let at = text.find("\"size\": ").unwrap() + "\"size\": ".len();
    let digit = text.as_bytes()[at];
    let mut forged = text.clone().into_bytes();
    forged[at] = if digit == b'1' { b'2' } else { b'1' };
    std::fs::write(&record, forged).unwrap();

    let (restored, stderr) = restart_fork(&sb, &[series.to_str().unwrap()]);
    assert!(stderr.contains("skipping snapshot 1: corrupt: open-files.json: "), "{stderr}");
    assert_eq!(restored, pid, "{stderr}");
    kill(restored);
}

/// A scheduler that restarts a job truncates the job's output file (Slurm's default
/// `--open-mode=truncate`), or makes it anew, and gives it to the restart as its
/// stdout: the restored process writes on into that output, as into a new pipe,
/// instead of the restore being refused because the file shrank or was replaced.
#[test]
fn a_new_output_file_given_to_the_restart_as_its_stdout_takes_the_output() {
    require_criu!();
    for anew in [false, true] {
        let sb = Sandbox::new(&format!("files-new-output-{anew}"));
        let stdout = sb.path("stdout.txt");
        let (pid, _) = counter_checkpointed_and_killed(&sb);
        let before = std::fs::metadata(&stdout).unwrap().ino();
        if anew {
            // Kept under another name, so that the new file cannot reuse its inode.
            std::fs::rename(&stdout, sb.path("stdout.old")).unwrap();
        }
        let output = File::create(&stdout).unwrap();
        assert_eq!(std::fs::metadata(&stdout).unwrap().ino() == before, !anew);
        let mut restart = sb.command(restart_tool());
        restart.arg(series(pid)).stdout(Stdio::from(output)).stderr(Stdio::piped());
        let mut restart = restart.spawn().unwrap();
        let printed = || {
            std::fs::read_to_string(&stdout)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("stdout "))
        };
        let wrote = wait_until(LONG, || printed() || restart.try_wait().unwrap().is_some());
        let wrote = wrote && printed();
        kill(pid);
        let status = restart.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(restart.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(wrote, "anew {anew}: nothing written into the new output ({status:?}): {stderr}");
        assert_eq!(status.code(), Some(128 + libc::SIGKILL), "anew {anew}: {stderr}");
        // It goes on counting where it was, from the start of the new file.
        let text = std::fs::read_to_string(&stdout).unwrap();
        let first: u64 =
            text.lines().next().unwrap().strip_prefix("stdout ").unwrap().parse().unwrap();
        assert!(first > 1, "anew {anew}: {text:?}");
        assert!(!stderr.contains("cut "), "{stderr}");
        assert!(wait_until(LONG, || !alive(pid)));
    }
}

//! The criu component end to end: real C programs without checkpoint callbacks,
//! checkpointed by `opal-checkpoint` through the real CRIU, killed and restored by
//! `opal-restart`, and the errors of both tools. Every test needs root and CRIU >= 4;
//! without them it says why on stderr and passes.

mod common;
use common::*;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(10);

fn plain_counter() -> PathBuf {
    cc("plain_counter.c", "plain_counter", &[])
}

/// One line of a count file: "<count> <pid> <ok|corrupt>".
#[derive(Debug, Clone, PartialEq)]
struct Count {
    n: i64,
    pid: u32,
    ok: bool,
}

/// The complete lines of a count file (a line still being written is left out).
fn counts(text: &str) -> Vec<Count> {
    text.split_inclusive('\n')
        .filter_map(|line| {
            let line = line.strip_suffix('\n')?;
            let mut words = line.split_whitespace();
            let n = words.next()?.parse().ok()?;
            let pid = words.next()?.parse().ok()?;
            let ok = words.next()? == "ok";
            Some(Count { n, pid, ok })
        })
        .collect()
}

/// The counter's lines so far.
fn count_lines(sb: &Sandbox) -> Vec<Count> {
    counts(&sb.read("count"))
}

/// Starts plain_counter (criu selected) with MIB MiB and waits until it has counted twice.
fn start_counter(sb: &Sandbox, mib: u32) -> Child {
    let mut command = sb.command(plain_counter());
    command.arg(sb.path("count")).arg(mib.to_string()).env("OMPI_MCA_crs", "criu");
    let child = sb.spawn(command, "app");
    let started = wait_until(Duration::from_secs(15), || count_lines(sb).len() >= 2);
    assert!(started, "plain_counter did not start: {}", sb.read("app.out"));
    child
}

fn series_name(pid: u32) -> String {
    format!("opal_snapshot_{pid}.ckpt")
}

fn ns_pids(pid: u32) -> Vec<u32> {
    proc_status(pid, "NSpid")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn phases(sb: &Sandbox) -> Vec<String> {
    sb.read("count.phase").lines().map(str::to_string).collect()
}

/// Splits counts into the increasing runs they interleave (each line continues the run
/// that ended one below it, or starts a new one).
fn runs(lines: &[Count]) -> Vec<Vec<i64>> {
    let mut runs: Vec<Vec<i64>> = Vec::new();
    for line in lines {
        match runs.iter_mut().find(|run| run.last() == Some(&(line.n - 1))) {
            Some(run) => run.push(line.n),
            None => runs.push(vec![line.n]),
        }
    }
    runs
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: a plain kill of a process this test started or restored.
    unsafe { libc::kill(pid as i32, signal) };
}

#[test]
fn checkpoint_kill_and_restore_256_mib_in_the_same_pid() {
    require_criu!();
    let sb = Sandbox::new("criu-256");
    let mut app = start_counter(&sb, 256);
    let pid = app.id();
    let series = series_name(pid);

    let started = Instant::now();
    let (stdout, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    let checkpoint_time = started.elapsed();
    let count_after_checkpoint = count_lines(&sb).last().unwrap().n;
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   0 {series}\n")), "{stdout}");
    assert_eq!(snapshot, sb.path(&series).join("0"));
    let meta = std::fs::read_to_string(snapshot.join("snapshot_meta.data")).unwrap();
    assert!(meta.starts_with(&format!("# PID: {pid}\n# OPAL CRS Component: criu\n")), "{meta}");
    assert!(snapshot.join("opalcrs_manifest.json").is_file());
    for image in
        ["inventory.img", "pstree.img", &format!("core-{pid}.img"), &format!("mm-{pid}.img")]
    {
        assert!(snapshot.join(image).is_file(), "no {image} in {}", snapshot.display());
    }
    let pages: u64 = std::fs::read_dir(&snapshot)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(pages >= 256 << 20, "page images hold only {pages} bytes");
    assert!(wait_until(LONG, || phases(&sb) == ["continue"]), "phase file: {:?}", phases(&sb));

    kill_and_reap(&mut app);
    let lines_at_kill = count_lines(&sb).len();
    let count_at_kill = count_lines(&sb).last().unwrap().n;

    let started = Instant::now();
    let (restored, stderr) = restart_fork(&sb, &[&series]);
    let restore_time = started.elapsed();
    eprintln!(
        "criu 256 MiB: checkpoint {checkpoint_time:?} (page images {} MiB), restore {restore_time:?}",
        pages >> 20
    );
    assert_eq!(restored, pid, "restored under another PID; stderr: {stderr}");
    assert!(!stderr.contains("new PID namespace"), "{stderr}");
    assert_eq!(ns_pids(restored), [pid], "not in our PID namespace");

    let grown =
        wait_until(Duration::from_secs(15), || count_lines(&sb).len() >= lines_at_kill + 10);
    let lines = count_lines(&sb);
    assert!(
        grown,
        "the restored counter did not go on ({} lines, {lines_at_kill} at the kill)",
        lines.len()
    );
    let new = &lines[lines_at_kill..];
    assert!(new.iter().all(|c| c.ok && c.pid == pid), "after the restore: {new:?}");
    // The restored memory picks up the count where the image was taken, before the kill.
    assert!(
        new[0].n <= count_after_checkpoint + 1,
        "first restored count {} (kill at {count_at_kill})",
        new[0].n
    );
    assert!(
        new.windows(2).all(|w| w[1].n == w[0].n + 1),
        "restored counts not consecutive: {new:?}"
    );
    assert_eq!(phases(&sb), ["continue", "restart"]);
    kill(restored);
}

#[test]
fn repeated_checkpoints_continue_one_series_across_a_restore() {
    require_criu!();
    let sb = Sandbox::new("criu-repeat");
    let mut app = start_counter(&sb, 4);
    let pid = app.id();
    let series = series_name(pid);
    for seq in 0..3 {
        let (stdout, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
        assert!(stdout.starts_with(&format!("Snapshot Ref.: {seq:3} {series}\n")), "{stdout}");
        assert_eq!(snapshot, sb.path(&series).join(seq.to_string()));
    }
    assert!(wait_until(LONG, || phases(&sb).len() == 3), "{:?}", phases(&sb));
    kill_and_reap(&mut app);

    let (restored, _) = restart_fork(&sb, &[&series]);
    assert_eq!(restored, pid);
    assert!(wait_until(LONG, || phases(&sb).len() == 4), "{:?}", phases(&sb));
    let before = count_lines(&sb).len();
    assert!(
        wait_until(LONG, || count_lines(&sb).len() > before + 2),
        "the restored counter does not count"
    );
    let (stdout, snapshot) = checkpoint_ok(&sb, &[&restored.to_string()]);
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   3 {series}\n")), "{stdout}");
    assert_eq!(snapshot, sb.path(&series).join("3"));
    assert!(wait_until(LONG, || phases(&sb).len() == 5), "{:?}", phases(&sb));
    assert_eq!(phases(&sb), ["continue", "continue", "continue", "restart", "continue"]);
    let published = opalcrs::snapshot::Series::at(&sb.path(&series)).snapshots().unwrap();
    assert_eq!(published, [0, 1, 2, 3]);
    kill(restored);
}

#[test]
fn restart_while_the_original_runs_uses_a_new_pid_namespace() {
    require_criu!();
    let sb = Sandbox::new("criu-pidns");
    let mut app = start_counter(&sb, 4);
    let pid = app.id();
    let series = series_name(pid);
    checkpoint_ok(&sb, &[&pid.to_string()]);
    // Let the original run well ahead of the image, so that the two counts differ.
    let at_checkpoint = count_lines(&sb).last().unwrap().n;
    assert!(wait_until(LONG, || count_lines(&sb).last().unwrap().n > at_checkpoint + 15));

    let before = count_lines(&sb).len();
    let (restored, stderr) = restart_fork(&sb, &[&series]);
    assert!(stderr.contains("new PID namespace"), "{stderr}");
    assert_ne!(restored, pid);
    assert_eq!(ns_pids(restored), [restored, pid], "NSpid of the restored copy");
    let init: u32 = proc_status(restored, "PPid").unwrap().parse().unwrap();
    sb.adopt(init);
    assert_eq!(
        ns_pids(init).last(),
        Some(&1),
        "the restored copy's parent is not its namespace's init"
    );

    // Both count into the same file, under the same (original) PID: two interleaved runs.
    let two_runs = || {
        let found = runs(&count_lines(&sb)[before..]);
        found.len() == 2 && found.iter().all(|run| run.len() >= 5)
    };
    assert!(
        wait_until(LONG, two_runs),
        "runs after the restore: {:?}",
        runs(&count_lines(&sb)[before..])
    );
    assert!(count_lines(&sb)[before..].iter().all(|c| c.ok && c.pid == pid));
    assert!(alive(pid) && alive(restored));

    // With the original stopped, only the restored copy can answer the checkpoint.
    signal(pid, libc::SIGSTOP);
    let out = sb.checkpoint(&["--timeout", "15", &restored.to_string()]);
    signal(pid, libc::SIGCONT);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "checkpoint of the restored copy: {:?}\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   1 {series}\n")), "{stdout}");
    assert!(sb.path(&series).join("1/pstree.img").is_file());
    let before = count_lines(&sb).len();
    assert!(wait_until(LONG, || runs(&count_lines(&sb)[before..])
        .iter()
        .filter(|r| r.len() >= 3)
        .count()
        == 2));

    kill(restored);
    kill(init);
    kill_and_reap(&mut app);
    assert!(wait_until(LONG, || !alive(restored) && !alive(init)));
}

/// A process restored into a fresh PID namespace is checkpointed again by its PID as
/// seen from outside, its namespace killed, and restored again, three rounds. It is not
/// its session's leader (a shell started it in the background), and its stdout, a pipe
/// when dumped, is opal-restart's once restored, a file opened outside that namespace:
/// CRIU refused both.
#[test]
fn a_process_restored_into_a_fresh_pid_namespace_is_checkpointed_again_round_after_round() {
    require_criu!();
    let sb = Sandbox::new("criu-pidns-again");
    let mut command = sb.command("bash");
    command
        .args(["-c", "\"$0\" \"$@\" & echo $! > counter.pid; wait"])
        .arg(plain_counter())
        .arg(sb.path("count"))
        .arg("4")
        .env("OMPI_MCA_crs", "criu")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut shell = sb.spawn_in_session(command).unwrap();
    assert!(wait_until(LONG, || count_lines(&sb).len() >= 2), "plain_counter did not start");
    let pid: u32 = sb.read("counter.pid").trim().parse().unwrap();
    sb.adopt(pid);
    assert_ne!(proc_status(pid, "NSsid"), Some(pid.to_string()), "a session leader");
    let (_, mut snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    for round in 1..=3 {
        let (restored, stderr) =
            restart_fork(&sb, &["-mca", "crs_criu_pidns", "always", snapshot.to_str().unwrap()]);
        assert!(stderr.contains("new PID namespace"), "round {round}: {stderr}");
        assert_eq!(ns_pids(restored).last(), Some(&pid), "round {round}: its own PID");
        let init: u32 = proc_status(restored, "PPid").unwrap().parse().unwrap();
        sb.adopt(init);
        let before = count_lines(&sb).len();
        assert!(
            wait_until(LONG, || count_lines(&sb)[before..].iter().any(|c| c.pid == pid)),
            "round {round}: the restored copy does not count"
        );
        let out =
            sb.checkpoint(&["--wait", "-n", &format!("round-{round}"), &restored.to_string()]);
        assert!(out.status.success(), "round {round}: {:?}", text(&out));
        snapshot = snapshot_path(&out);
        kill(init);
        assert!(wait_until(LONG, || !alive(restored)), "round {round}: outlives its namespace");
    }
    kill(pid);
    kill_and_reap(&mut shell);
    // Every restored copy went on from its own snapshot, its memory intact.
    assert!(count_lines(&sb).iter().all(|c| c.ok && c.pid == pid));
}

#[test]
fn term_ends_the_process_after_the_snapshot() {
    require_criu!();
    let sb = Sandbox::new("criu-term");
    let mut app = start_counter(&sb, 4);
    let pid = app.id();
    let (stdout, snapshot) = checkpoint_ok(&sb, &["--term", &pid.to_string()]);
    assert!(stdout.contains(&format!("Snapshot Path: {}", snapshot.display())), "{stdout}");
    assert!(snapshot.join("snapshot_meta.data").is_file());
    assert!(snapshot.join("pstree.img").is_file());
    let status = wait_exit(&mut app, LONG).expect("the process did not end after --term");
    assert_eq!(status.code(), Some(0), "{status:?}; output: {}", sb.read("app.out"));
}

#[test]
fn stdout_in_a_file_without_append_that_grew() {
    require_criu!();
    let sb = Sandbox::new("criu-stdout");
    let program = cc("criu_stdout_counter.c", "criu_stdout_counter", &[]);
    let stdout_file = sb.path("stdout.txt");
    let mut command = sb.command(program);
    command
        .arg(sb.path("count"))
        .env("OMPI_MCA_crs", "criu")
        .stdout(Stdio::from(File::create(&stdout_file).unwrap()))
        .stderr(Stdio::from(File::create(sb.path("stderr.txt")).unwrap()));
    let mut app = sb.spawn_in_session(command).unwrap();
    let pid = app.id();
    let counting = wait_until(LONG, || count_lines(&sb).len() >= 2);
    assert!(counting, "{:?} {}{}", app.try_wait(), sb.read("stdout.txt"), sb.read("stderr.txt"));
    checkpoint_ok(&sb, &[&pid.to_string()]);
    let size_at_checkpoint = std::fs::metadata(&stdout_file).unwrap().len();
    let grew = wait_until(LONG, || {
        std::fs::metadata(&stdout_file).unwrap().len() > size_at_checkpoint + 20
    });
    assert!(
        grew,
        "stdout did not grow after the checkpoint ({size_at_checkpoint} bytes then); alive: {}; count lines: {}; stderr: {}",
        alive(pid),
        count_lines(&sb).len(),
        sb.read("stderr.txt")
    );
    kill_and_reap(&mut app);

    let lines_at_kill = count_lines(&sb).len();
    let (status, out, err) = run_restart(&sb, &["--fork", &series_name(pid)]);
    assert!(status.success(), "restore with a grown stdout file failed: {status:?}\n{out}{err}");
    let restored: u32 = out.trim().parse().unwrap();
    sb.adopt(restored);
    assert_eq!(restored, pid);
    assert!(
        wait_until(LONG, || count_lines(&sb).len() >= lines_at_kill + 5),
        "the restored program does not count"
    );
    let printed = std::fs::read_to_string(&stdout_file).unwrap();
    assert!(printed.lines().last().is_some_and(|l| l.starts_with("stdout ")), "{printed:?}");
    kill(restored);
}

#[test]
fn a_missing_criu_binary_fails_opal_init() {
    require_criu!();
    let sb = Sandbox::new("criu-nobin-init");
    let mut command = sb.command(plain_counter());
    command
        .arg(sb.path("count"))
        .arg("1")
        .env("OMPI_MCA_crs", "criu")
        .env("OMPI_MCA_crs_criu_binary", "/nonexistent/criu");
    let mut app = sb.spawn(command, "app");
    let status = wait_exit(&mut app, LONG).expect("plain_counter did not end");
    assert_eq!(status.code(), Some(4), "{status:?}: {}", sb.read("app.out"));
    let out = sb.read("app.out");
    assert!(out.contains("criu") && out.contains("/nonexistent/criu"), "{out}");
    assert!(sb.read("count").is_empty());
}

#[test]
fn a_missing_criu_binary_fails_the_restore_with_126() {
    require_criu!();
    let sb = Sandbox::new("criu-nobin-restart");
    let mut app = start_counter(&sb, 1);
    let pid = app.id();
    checkpoint_ok(&sb, &[&pid.to_string()]);
    kill_and_reap(&mut app);
    let (status, stdout, stderr) =
        run_restart(&sb, &["-mca", "crs_criu_binary", "/nonexistent/criu", &series_name(pid)]);
    assert_eq!(status.code(), Some(126), "{status:?}\n{stdout}{stderr}");
    assert!(stderr.contains("CRIU") && stderr.contains("/nonexistent/criu"), "{stderr}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "something was restored");
}

#[test]
fn a_process_of_another_user_is_dumped_by_roots_tool_not_by_its_own() {
    require_criu!();
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and CRIU >= 4 (and setpriv, which is missing)");
        return;
    }
    let sb = Sandbox::new("criu-nobody");
    let home = sb.path("nobody");
    std::fs::create_dir_all(&home).unwrap();
    // Its own home: a series in a directory anyone may write is refused.
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let count = home.join("count");
    // What nobody runs is copied into the sandbox (its library as the soname).
    for (program, name) in [
        (plain_counter(), "plain_counter"),
        (lib_dir().join("libopalcrs.so"), "libopalcrs.so.0"),
        (checkpoint_tool(), "opal-checkpoint"),
        (restart_tool(), "opal-restart"),
    ] {
        sb.copy_program(&program, name);
    }
    let as_nobody = |program: &str| {
        let mut command = sb.command("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(sb.path(program))
            .current_dir(&home)
            .env("HOME", &home)
            .env("LD_LIBRARY_PATH", &sb.dir)
            // CRIU's failed check log is kept in a temporary directory: keep it here.
            .env("TMPDIR", &home);
        command
    };
    // Its output is nobody's: root's restore reopens no file of another user for it.
    std::fs::write(sb.path("app.out"), "").unwrap();
    std::os::unix::fs::chown(sb.path("app.out"), Some(65534), Some(65534)).unwrap();
    let mut command = as_nobody("plain_counter");
    command.arg(&count).arg("1").env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let read_counts = || counts(&std::fs::read_to_string(&count).unwrap_or_default());
    assert!(wait_until(LONG, || read_counts().len() >= 2), "{}", sb.read("app.out"));
    let uid =
        |pid: u32| proc_status(pid, "Uid").unwrap().split_whitespace().next().map(str::to_string);
    assert_eq!(uid(pid).as_deref(), Some("65534"));

    // Its owner's opal-checkpoint cannot help: the process may not dump itself.
    let out =
        as_nobody("opal-checkpoint").args(["--timeout", "15", &pid.to_string()]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stderr.contains("criu") && stderr.contains("may not dump itself"), "{stderr}");
    assert!(
        stderr.contains("CAP_CHECKPOINT_RESTORE") && stderr.contains("run opal-checkpoint as root"),
        "{stderr}"
    );
    let series = home.join(series_name(pid));
    if series.exists() {
        let published = opalcrs::snapshot::Series::at(&series).snapshots().unwrap();
        assert!(published.is_empty(), "published after a failed dump: {published:?}");
    }
    let lines = read_counts().len();
    assert!(wait_until(LONG, || read_counts().len() > lines + 2), "the process stopped counting");

    // Root's opal-checkpoint dumps it on its behalf, into its own snapshot, as its files.
    // Offers are given to the process's owner (other tests make offers to other users).
    let offers = || -> Vec<std::ffi::OsString> {
        use std::os::unix::fs::MetadataExt;
        let entries = std::fs::read_dir(std::env::temp_dir()).unwrap().flatten();
        entries
            .filter(|e| e.metadata().is_ok_and(|m| m.uid() == 65534))
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with("opalcrs-dump-"))
            .collect()
    };
    let offers_before = offers();
    let out = sb.checkpoint(&["--timeout", "30", &pid.to_string()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let snapshot = snapshot_path(&out);
    assert_eq!(snapshot, series.join("0"));
    let files: Vec<_> = std::fs::read_dir(&snapshot).unwrap().flatten().collect();
    assert!(files.iter().any(|f| f.file_name() == "pstree.img"), "{files:?}");
    assert!(!snapshot.join("criu-by-tool").exists());
    for file in &files {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(file.metadata().unwrap().uid(), 65534, "{}", file.path().display());
    }
    assert_eq!(offers(), offers_before, "the rendezvous directory was left behind");
    let at_checkpoint = read_counts().last().unwrap().n;
    assert!(wait_until(LONG, || read_counts().last().unwrap().n > at_checkpoint + 2));
    kill_and_reap(&mut app);

    // Its owner may not restore it either; root does: the same PID, the same user,
    // counting on from the image.
    let mut restart = as_nobody("opal-restart");
    let out = restart.args(["--fork", series.to_str().unwrap()]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(126), "{stdout}{stderr}");
    assert!(stderr.contains("needs root or CAP_CHECKPOINT_RESTORE"), "{stderr}");
    let before = read_counts().len();
    let (restored, stderr) = restart_fork(&sb, &[series.to_str().unwrap()]);
    assert_eq!(restored, pid, "{stderr}");
    assert_eq!(uid(restored).as_deref(), Some("65534"));
    assert!(wait_until(LONG, || read_counts().len() >= before + 3), "{}", sb.read("app.out"));
    let after = &read_counts()[before..];
    assert!(after.iter().all(|c| c.ok && c.pid == pid), "{after:?}");
    assert!(
        after[0].n <= at_checkpoint + 1,
        "restored at {} (checkpoint at {at_checkpoint})",
        after[0].n
    );
    kill(restored);
}

#[test]
fn restore_without_fork_waits_and_passes_the_exit_status() {
    require_criu!();
    let sb = Sandbox::new("criu-wait");
    let mut app = start_counter(&sb, 4);
    let pid = app.id();
    checkpoint_ok(&sb, &[&pid.to_string()]);
    kill_and_reap(&mut app);
    let lines_at_kill = count_lines(&sb).len();

    let mut command = sb.command(restart_tool());
    command.arg(series_name(pid));
    let mut restart = sb.spawn(command, "restart");
    let counting = wait_until(LONG, || count_lines(&sb).len() >= lines_at_kill + 3);
    assert!(counting, "the restored program does not count: {}", sb.read("restart.out"));
    let restored = count_lines(&sb).last().unwrap().pid;
    sb.adopt(restored);
    assert_eq!(restored, pid);
    assert!(alive(restored));
    assert_eq!(
        wait_exit(&mut restart, Duration::from_millis(300)),
        None,
        "opal-restart did not wait"
    );

    kill(restored);
    let status =
        wait_exit(&mut restart, LONG).expect("opal-restart did not end with the restored process");
    assert_eq!(
        status.code(),
        Some(137),
        "{status:?} (signal {:?}): {}",
        status.signal(),
        sb.read("restart.out")
    );
}

#[test]
fn fork_into_a_new_pid_namespace_lets_go_of_the_callers_stdout() {
    require_criu!();
    let sb = Sandbox::new("criu-pidns-pipe");
    let mut app = start_counter(&sb, 1);
    let pid = app.id();
    checkpoint_ok(&sb, &[&pid.to_string()]);
    let mut restart = sb
        .command(restart_tool())
        .args(["--fork", &series_name(pid)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = restart.stdout.take().unwrap();
    // The printed PID comes as a line; EOF comes when the last writer has closed the pipe.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut reader, &mut line);
        let _ = sender.send(Some(line));
        let _ = std::io::Read::read_to_end(&mut reader, &mut Vec::new());
        let _ = sender.send(None);
    });
    let status = wait_exit(&mut restart, LONG).expect("opal-restart --fork did not end");
    assert!(status.success(), "{status:?}");
    let line = receiver.recv_timeout(LONG).expect("no PID printed").unwrap();
    let restored: u32 = line.trim().parse().unwrap_or_else(|_| panic!("--fork printed {line:?}"));
    sb.adopt(restored);
    let init: u32 = proc_status(restored, "PPid").unwrap().parse().unwrap();
    sb.adopt(init);
    assert_eq!(ns_pids(restored), [restored, pid]);
    let eof = receiver.recv_timeout(Duration::from_secs(3));
    kill(restored);
    kill(init);
    kill_and_reap(&mut app);
    assert_eq!(eof, Ok(None), "opal-restart's stdout pipe stayed open after it had exited");
}

#[test]
fn a_changed_executable_is_named_before_the_restore() {
    require_criu!();
    let sb = Sandbox::new("criu-identity");
    // A private copy of the program, so changing it disturbs no other test.
    let exe = sb.copy_program(&plain_counter(), "plain_counter");
    let mut command = sb.command(&exe);
    command.arg(sb.path("count")).arg("1").env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    assert!(
        wait_until(Duration::from_secs(15), || count_lines(&sb).len() >= 2),
        "{}",
        sb.read("app.out")
    );
    let (_, snapshot) = checkpoint_ok(&sb, &[&app.id().to_string()]);
    let manifest = std::fs::read_to_string(snapshot.join("opalcrs_manifest.json")).unwrap();
    assert!(
        manifest.contains(exe.to_str().unwrap()) && manifest.contains("\"build_id\": \""),
        "{manifest}"
    );
    kill_and_reap(&mut app);
    let out = sb.restart(&["--verify", snapshot.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("\nRestorable here: yes (same kernel, executable and libraries)\n"),
        "{stdout}"
    );
    // Rebuilt in place: the build-id differs.
    let status = Command::new("cc")
        .args(["-std=gnu11", "-DREBUILT=1", "-o"])
        .arg(&exe)
        .arg(repo().join("c-tests/plain_counter.c"))
        .arg(format!("-I{}", repo().join("include").display()))
        .arg(format!("-L{}", lib_dir().display()))
        .arg("-lopalcrs")
        .status()
        .unwrap();
    assert!(status.success());
    let (status, _, stderr) = run_restart(&sb, &["--fork", snapshot.to_str().unwrap()]);
    assert_eq!(status.code(), Some(126), "{stderr}");
    let change = format!("{} changed since the checkpoint (build-id ", exe.display());
    assert!(stderr.contains(&change), "{stderr}");
    // --verify: the snapshot is intact, but a restart here refuses it (exit 3), saying why.
    let out = sb.restart(&["--verify", "--json", snapshot.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["state"], "good", "{stdout}");
    assert_eq!(report["restorable_here"], false, "{stdout}");
    assert!(report["identity_change"].as_str().unwrap().starts_with(&change), "{stdout}");
    assert!(report["restore_refusal"].as_str().unwrap().contains(&change), "{stdout}");
}

#[test]
fn opalcrs_checkpoint_returns_restart_in_the_restored_image() {
    require_criu!();
    let sb = Sandbox::new("criu-api");
    let mut command = sb.command(cc("criu_api.c", "criu_api", &[]));
    command.arg(sb.path("log")).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let continued = format!("rc=0 state=4 pid={pid} dir=");
    assert!(
        wait_until(Duration::from_secs(15), || sb.read("log").contains(&continued)),
        "{}{}",
        sb.read("log"),
        sb.read("app.out")
    );
    let snapshot = sb.path(&series_name(pid)).join("0");
    assert!(
        sb.read("log").contains(&format!("dir={}\n", snapshot.display())),
        "{}",
        sb.read("log")
    );
    kill_and_reap(&mut app);
    let (restored, _) = restart_fork(&sb, &[snapshot.to_str().unwrap()]);
    sb.adopt(restored);
    let restarted = format!("rc=0 state=3 pid={pid} dir={}\n", snapshot.display());
    assert!(wait_until(LONG, || sb.read("log").contains(&restarted)), "{}", sb.read("log"));
}

/// Starts plain_counter (criu selected, ENV added) in a new PID namespace without a
/// session of its own, so that its session leader lies outside that namespace, as for
/// a job started by `unshare --pid --fork` from a shell. The counter is the second
/// process there, after a shell that waits for it; its files are opened inside the new
/// mount namespace. Returns the `unshare` child and the counter's PID seen from here.
fn start_counter_in_foreign_session(sb: &Sandbox, env: &[(&str, &str)]) -> (Child, u32) {
    let script = r#""$1" "$2" 0 </dev/null >>"$3" 2>&1 & wait"#;
    let mut command = sb.command("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh"])
        .arg(plain_counter())
        .arg(sb.path("count"))
        .arg(sb.path("app.out"))
        .env("OMPI_MCA_crs", "criu")
        .envs(env.iter().copied());
    // Descriptors inherited from outside would point into the old mount namespace,
    // which CRIU cannot dump; the test's own descriptors are not the counter's business.
    // SAFETY: close_range is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let child = sb.spawn(command, "unshare");
    let mut counter = None;
    let found = wait_until(LONG, || {
        counter = children(child.id()).first().and_then(|&sh| children(sh).first().copied());
        counter.is_some()
    });
    assert!(found, "no counter under unshare: {}", sb.read("unshare.out"));
    let counter = counter.unwrap();
    sb.adopt(counter);
    let started = wait_until(Duration::from_secs(15), || count_lines(sb).len() >= 2);
    assert!(started, "plain_counter did not start: {}", sb.read("app.out"));
    (child, counter)
}

#[test]
fn a_process_whose_session_leader_is_outside_its_pid_namespace_is_checkpointed() {
    require_criu!();
    let sb = Sandbox::new("criu-foreign-session");
    let (mut ns, pid) = start_counter_in_foreign_session(&sb, &[]);
    let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    assert!(snapshot.join("pstree.img").is_file());
    // The series is named after the PID the process knows, its PID inside.
    let inner = *ns_pids(pid).last().unwrap();
    let series = series_name(inner);
    assert_eq!(snapshot.parent(), Some(sb.path(&series).as_path()));
    assert!(wait_until(LONG, || count_lines(&sb).len() >= 4));
    kill(pid);
    kill_and_reap(&mut ns);
    let at_kill = count_lines(&sb).last().unwrap().n;

    let (restored, stderr) = restart_fork(&sb, &[&series]);
    // It keeps the PID it knows. Where that PID is taken here (PID 2 is, outside a PID
    // namespace) it gets a new namespace, whose init is ours to end too.
    assert_eq!(ns_pids(restored).last(), Some(&inner), "{stderr}");
    let init = (restored != inner).then(|| {
        assert!(stderr.contains("new PID namespace"), "{stderr}");
        let init: u32 = proc_status(restored, "PPid").unwrap().parse().unwrap();
        sb.adopt(init);
        init
    });
    let before = count_lines(&sb).len();
    assert!(
        wait_until(LONG, || count_lines(&sb).len() >= before + 3),
        "the restored copy does not count: {}",
        sb.read("app.out")
    );
    let after = &count_lines(&sb)[before..];
    assert!(after.iter().all(|c| c.ok && c.pid == inner), "{after:?}");
    assert!(
        after[0].n <= at_kill + 1,
        "restored at {} after being killed at {at_kill}",
        after[0].n
    );
    kill(restored);
    if let Some(init) = init {
        kill(init);
    }
    assert!(wait_until(LONG, || !alive(restored) && !init.is_some_and(alive)));
}

#[test]
fn without_a_session_of_its_own_the_checkpoint_fails_and_names_the_cause() {
    require_criu!();
    let sb = Sandbox::new("criu-foreign-session-kept");
    let (mut ns, pid) =
        start_counter_in_foreign_session(&sb, &[("OMPI_MCA_crs_criu_new_session", "0")]);
    let out = sb.checkpoint(&[&pid.to_string()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stderr.contains("session leader is outside its PID namespace"), "{stderr}");
    assert!(stderr.contains("crs_criu_new_session"), "{stderr}");
    // Nothing is published, and the process counts on.
    let series = sb.path(&series_name(*ns_pids(pid).last().unwrap()));
    let published: Vec<_> = std::fs::read_dir(&series)
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()).collect()
        })
        .unwrap_or_default();
    assert!(published.is_empty(), "{published:?}");
    let now = count_lines(&sb).len();
    assert!(wait_until(LONG, || count_lines(&sb).len() > now + 2));
    kill(pid);
    kill_and_reap(&mut ns);
}

#[test]
fn a_damaged_newest_image_is_rejected_while_restoring_and_the_older_one_restarts() {
    require_criu!();
    let sb = Sandbox::new("criu-damaged");
    let mut app = start_counter(&sb, 16);
    let pid = app.id();
    let series = series_name(pid);
    checkpoint_ok(&sb, &[&pid.to_string()]);
    let count_at_0 = count_lines(&sb).last().unwrap().n;
    assert!(wait_until(LONG, || count_lines(&sb).last().unwrap().n > count_at_0 + 10));
    let (_, newest) = checkpoint_ok(&sb, &[&pid.to_string()]);
    assert_eq!(newest, sb.path(&series).join("1"));
    kill_and_reap(&mut app);

    // One flipped byte in the middle of the biggest page image of snapshot 1.
    let pages = std::fs::read_dir(&newest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pages).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&pages, bytes).unwrap();

    let before = count_lines(&sb).len();
    let (restored, stderr) = restart_fork(&sb, &["-v", &series]);
    // Snapshot 1 was restored while being checked, found damaged, and the choice made
    // again with every snapshot checked first.
    let name = pages.file_name().unwrap().to_string_lossy().into_owned();
    let order = [
        format!("restarting {} with component criu", newest.display()),
        format!("skipping snapshot 1: corrupt: {name}"),
        format!("restarting {} with component criu", sb.path(&series).join("0").display()),
    ];
    let at: Vec<Option<usize>> = order.iter().map(|line| stderr.find(line.as_str())).collect();
    assert!(at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]), "{stderr}");
    assert_eq!(restored, pid, "{stderr}");
    assert!(wait_until(LONG, || count_lines(&sb).len() >= before + 5), "{}", sb.read("app.out"));
    // One run, from snapshot 0's count, in intact memory: the copy restored from the
    // damaged image was held stopped and killed before it could count.
    let after = &count_lines(&sb)[before..];
    assert!(after.iter().all(|c| c.ok && c.pid == pid), "{after:?}");
    assert_eq!(runs(after).len(), 1, "{after:?}");
    assert!(
        after[0].n <= count_at_0 + 1,
        "restarted at {} (snapshot 0 at {count_at_0})",
        after[0].n
    );
    kill(restored);
}

/// Issue 12, finding 8: while CRIU dumps a process its control socket is closed (CRIU
/// cannot dump a connection to an outside process). Meanwhile another `opal-checkpoint`
/// learns that a checkpoint is in progress (exit 5), `--status` says "checkpointing",
/// and `--wait` waits and then takes its own snapshot.
#[test]
fn requests_during_a_dump_learn_it_is_in_progress() {
    require_criu!();
    let sb = Sandbox::new("criu-busy");
    let mut app = start_counter(&sb, 512);
    let pid = app.id().to_string();
    let tool = |args: &[&str]| {
        sb.command(checkpoint_tool())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = tool(&["--timeout", "60", &pid]);
    let closed = wait_until(LONG, || opalcrs::control::locate(app.id() as i32).is_err());
    assert!(closed, "the control socket was never closed for the dump");

    let second = sb.checkpoint(&["--timeout", "10", &pid]);
    let status = sb.checkpoint(&["--status", &pid]);
    let waiting = tool(&["--wait", "--timeout", "60", &pid]);
    let first = first.wait_with_output().unwrap();
    let (second_out, second_err) = text(&second);
    let (status_out, status_err) = text(&status);
    assert_eq!(second.status.code(), Some(5), "{second_out}{second_err}");
    assert!(second_err.contains("in progress"), "{second_err}");
    assert!(status.status.success(), "{status_out}{status_err}");
    assert!(status_out.contains("State: checkpointing"), "{status_out}");
    assert!(text(&first).0.starts_with("Snapshot Ref.:   0 "), "{:?}", text(&first));
    let waited = waiting.wait_with_output().unwrap();
    assert!(waited.status.success(), "{:?}", text(&waited));
    assert!(text(&waited).0.starts_with("Snapshot Ref.:   1 "), "{:?}", text(&waited));
    kill_and_reap(&mut app);
}

/// The rendezvous directories that root's opal-checkpoint `tool` offered.
fn offers_of(tool: u32) -> Vec<PathBuf> {
    let prefix = format!("opalcrs-dump-{tool}-");
    let entries = std::fs::read_dir(std::env::temp_dir()).unwrap().flatten();
    entries
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Issue 12, finding 9: root's opal-checkpoint, dumping a user's process on its
/// behalf, is killed at several points after the process has asked for the dump (before
/// and while CRIU runs). Within about 2 s the process gives the checkpoint up, removes
/// the rendezvous directory and is idle, and the next checkpoint succeeds.
#[test]
fn a_killed_root_tool_releases_the_process_it_offered_to_dump() {
    require_criu!();
    let Some(user) = TempUser::create("rdv") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("criu-behalf-killed");
    let home = user.home_in(&sb);
    let program = sb.copy_program(&plain_counter(), "plain_counter");
    sb.copy_program(&lib_dir().join("libopalcrs.so"), "libopalcrs.so.0");
    let count = home.join("count");
    let mut command = user.command(&sb, &program, &home);
    command
        .arg(&count)
        .arg("256")
        .env("OMPI_MCA_crs", "criu")
        .env("LD_LIBRARY_PATH", &sb.dir)
        .env("TMPDIR", &home);
    let mut app = sb.spawn(command, "app");
    // Where the dump was when the tool died: CRIU runs as the user.
    let criu_runs = || {
        let entries = std::fs::read_dir("/proc").unwrap().flatten();
        entries.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "criu")
                && proc_status(p, "Uid").is_some_and(|u| u.starts_with(&user.uid.to_string()))
        })
    };
    let pid = app.id();
    let read_counts = || counts(&std::fs::read_to_string(&count).unwrap_or_default());
    assert!(wait_until(LONG, || read_counts().len() >= 2), "{}", sb.read("app.out"));
    let idle = || {
        let endpoint = opalcrs::control::locate(pid as i32).ok()?;
        let reply =
            endpoint.call(opalcrs::control::Request::Status, Duration::from_secs(1)).ok()?;
        Some(reply.status?.state == "idle")
    };

    let mut released_after = Vec::new();
    for delay_ms in [0, 20, 50, 100, 200, 400] {
        let mut tool = sb
            .command(checkpoint_tool())
            .args(["--timeout", "60", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let tool_pid = tool.id();
        let asked = wait_until(LONG, || {
            offers_of(tool_pid).iter().any(|offer| offer.join("request.json").exists())
        });
        assert!(asked, "the process never asked root's tool for its dump");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let answered = offers_of(tool_pid).iter().any(|offer| offer.join("done").exists());
        let during = if answered {
            "answered"
        } else if criu_runs() {
            "criu"
        } else {
            "asked"
        };
        kill_and_reap(&mut tool);
        let killed = Instant::now();
        // CRIU, not the tool's child, finishes a dump it started; the process is frozen
        // until then. What counts is how soon after that the process lets go.
        assert!(wait_until(Duration::from_secs(10), || !criu_runs()), "CRIU did not end");
        let criu_done = Instant::now();
        let released = wait_until(Duration::from_secs(5), || {
            offers_of(tool_pid).is_empty() && idle() == Some(true)
        });
        released_after.push((delay_ms, during, criu_done - killed, criu_done.elapsed()));
        assert!(
            released,
            "killed {delay_ms} ms into the dump: still held (offers {:?}, idle {:?}); {}",
            offers_of(tool_pid),
            idle(),
            sb.read("app.out")
        );
        checkpoint_ok(&sb, &["--timeout", "30", &pid.to_string()]);
    }
    eprintln!(
        "(tool killed ms after the request, the dump then, CRIU still ran for, released after \
         that): {released_after:?}"
    );
    assert!(
        released_after.iter().all(|(_, _, _, t)| *t < Duration::from_secs(2)),
        "{released_after:?}"
    );
    kill_and_reap(&mut app);
}

/// The biggest page image of a criu snapshot.
fn biggest_pages(snapshot: &Path) -> PathBuf {
    std::fs::read_dir(snapshot)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path()
}

fn truncate_to_half(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len();
    File::options().write(true).open(file).unwrap().set_len(len / 2).unwrap();
}

/// Makes the manifest of `snapshot` agree with `file` as it is now (size, and the hash
/// too with `hash`): damage that only a restore can find.
fn relist(snapshot: &Path, file: &Path, hash: bool) {
    let mut manifest = opalcrs::snapshot::Manifest::read(snapshot).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let entry = manifest.files.iter_mut().find(|entry| entry.path == name).unwrap();
    let (size, digest) = opalcrs::snapshot::hash_file(file).unwrap();
    entry.size = size;
    if hash {
        entry.hash = digest;
    }
    manifest.write_to(snapshot).unwrap();
}

/// Processes whose command line names `path` (criu swrk calls itself "criu: restore
/// --rpc -D DIR" while it restores DIR).
fn restoring(path: &Path) -> Vec<u32> {
    let needle = path.to_str().unwrap().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.windows(needle.len()).any(|window| window == needle)
        })
        .collect()
}

/// Finding 6 of issue 12: whatever is wrong with the newest snapshot of a criu series,
/// the restart falls back to the older good one, says why, and does not hang; with only
/// the damaged snapshot it fails with a clear error.
#[test]
fn a_damaged_criu_snapshot_of_any_kind_falls_back_to_the_older_good_one() {
    require_criu!();
    let sb = Sandbox::new("criu-fallback");
    let mut app = start_counter(&sb, 16);
    let pid = app.id();
    let series = sb.path(&series_name(pid));
    checkpoint_ok(&sb, &[&pid.to_string()]);
    let (_, newest) = checkpoint_ok(&sb, &[&pid.to_string()]);
    assert_eq!(newest, series.join("1"));
    kill_and_reap(&mut app);
    let pages_name = biggest_pages(&newest).file_name().unwrap().to_string_lossy().into_owned();
    let core_name = std::fs::read_dir(&newest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("core-"))
        .unwrap();

    type Damage = fn(&Path);
    // (case, damage of snapshot 1, why it is skipped)
    let cases: Vec<(&str, Damage, String)> = vec![
        (
            "truncated-pages",
            |dir| truncate_to_half(&biggest_pages(dir)),
            format!("corrupt: {pages_name}: size "),
        ),
        (
            "missing-pstree",
            |dir| std::fs::remove_file(dir.join("pstree.img")).unwrap(),
            "corrupt: pstree.img: missing".to_string(),
        ),
        (
            "missing-core",
            |dir| {
                let core = std::fs::read_dir(dir)
                    .unwrap()
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with("core-"))
                    .unwrap();
                std::fs::remove_file(core.path()).unwrap()
            },
            format!("corrupt: {core_name}: missing"),
        ),
        (
            "flipped-pages",
            |dir| {
                let pages = biggest_pages(dir);
                let mut bytes = std::fs::read(&pages).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x5a;
                std::fs::write(&pages, bytes).unwrap();
            },
            format!("corrupt: {pages_name}: xxh3-128 "),
        ),
        (
            "extra-file",
            |dir| std::fs::write(dir.join("extra.img"), b"x").unwrap(),
            "corrupt: extra.img: not listed in the manifest".to_string(),
        ),
        (
            "missing-manifest",
            |dir| std::fs::remove_file(dir.join("opalcrs_manifest.json")).unwrap(),
            "corrupt: opalcrs_manifest.json: missing".to_string(),
        ),
        // Truncated, and the manifest's size made to agree: CRIU gets to read it (and
        // stalls); the check that runs beside it names the damage.
        (
            "stalling-pages",
            |dir| {
                let pages = biggest_pages(dir);
                truncate_to_half(&pages);
                relist(dir, &pages, false);
            },
            format!("corrupt: {pages_name}: xxh3-128 "),
        ),
        // The same with the hash made to agree too: only the restore's time limit finds it.
        (
            "stalling-relisted",
            |dir| {
                let pages = biggest_pages(dir);
                truncate_to_half(&pages);
                relist(dir, &pages, true);
            },
            "made no progress in 3 s".to_string(),
        ),
    ];
    let mut table = Vec::new();
    for (case, damage, why) in &cases {
        let copy = sb.path(case);
        let copied = Command::new("cp").arg("-a").arg(&series).arg(&copy).status().unwrap();
        assert!(copied.success());
        damage(&copy.join("1"));
        let copy_arg = copy.to_str().unwrap();

        let started = Instant::now();
        let before = count_lines(&sb).len();
        let (status, stdout, stderr) =
            run_restart(&sb, &["--fork", "-v", "-mca", "crs_criu_restore_timeout", "3", copy_arg]);
        let took = started.elapsed();
        assert!(status.success(), "{case}: {status:?}\n{stdout}{stderr}");
        let restored: u32 = stdout.trim().parse().unwrap();
        sb.adopt(restored);
        let skipped = stderr.lines().find(|l| l.contains("skipping snapshot 1: ")).unwrap_or("");
        assert!(skipped.contains(why.as_str()), "{case}: {stderr}");
        let restarted = format!("restarting {} with component criu", copy.join("0").display());
        assert!(stderr.contains(&restarted), "{case}: {stderr}");
        assert_eq!(restored, pid, "{case}: {stderr}");
        assert!(took < Duration::from_secs(12), "{case}: took {took:?}");
        assert!(wait_until(LONG, || count_lines(&sb).len() >= before + 3), "{case}");
        assert!(count_lines(&sb)[before..].iter().all(|c| c.ok && c.pid == pid), "{case}");
        kill(restored);
        assert!(wait_until(LONG, || !Path::new(&format!("/proc/{pid}")).exists()), "{case}");
        // What the restore left in snapshot 0 (CRIU's stats-restore) does not damage it.
        let verdict = opalcrs::snapshot::verify(&copy.join("0"));
        assert_eq!(verdict, opalcrs::snapshot::Verdict::Good, "{case}");
        table.push(format!("{case}: snapshot 0 in {took:.1?} ({})", skipped.trim()));

        // Alone, the damaged snapshot is refused, in bounded time, saying why.
        let started = Instant::now();
        let (status, stdout, stderr) =
            run_restart(&sb, &["-s", "1", "-mca", "crs_criu_restore_timeout", "3", copy_arg]);
        let took = started.elapsed();
        let expected = if *case == "stalling-relisted" { 126 } else { 125 };
        assert_eq!(status.code(), Some(expected), "{case}: {stdout}{stderr}");
        assert!(stderr.contains(why.as_str()), "{case}: {stderr}");
        assert!(took < Duration::from_secs(12), "{case}: took {took:?}");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{case}: something runs");
        assert_eq!(restoring(&copy), Vec::<u32>::new(), "{case}: CRIU left behind");
        table.push(format!("{case} alone: exit {expected} in {took:.1?}"));
    }
    // A stalled restore into a new PID namespace ends with the namespace.
    let copy = sb.path("stalling-relisted");
    let (status, stdout, stderr) = run_restart(
        &sb,
        &[
            "-s",
            "1",
            "-mca",
            "crs_criu_restore_timeout",
            "2",
            "-mca",
            "crs_criu_pidns",
            "always",
            copy.to_str().unwrap(),
        ],
    );
    assert_eq!(status.code(), Some(126), "{stdout}{stderr}");
    assert!(stderr.contains("made no progress in 2 s"), "{stderr}");
    assert_eq!(restoring(&copy), Vec::<u32>::new(), "CRIU left behind in a PID namespace");

    // A failure that is not the snapshot's (its PID taken, no new namespace allowed)
    // ends the restart: no older snapshot is taken instead.
    let (running, _) = restart_fork(&sb, &[series.to_str().unwrap()]);
    assert_eq!(running, pid);
    let (status, stdout, stderr) =
        run_restart(&sb, &["-v", "-mca", "crs_criu_pidns", "never", series.to_str().unwrap()]);
    assert_eq!(status.code(), Some(126), "{stdout}{stderr}");
    assert!(stderr.contains("still in use"), "{stderr}");
    assert!(!stderr.contains("skipping") && !stderr.contains("/0 with"), "{stderr}");
    kill(running);
    eprintln!("fallback per damage:\n{}", table.join("\n"));
}

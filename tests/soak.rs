//! Soak and shape tests (issue #9 items 4 and 5): one process checkpointed many times
//! in a row must not leak descriptors, threads or memory, and the series must hold
//! exactly `keep` good snapshots; programs with worker threads and with a child process
//! survive a checkpoint, a SIGKILL and a restart. The criu tests need root and
//! CRIU >= 4; without them they say why on stderr and pass.

mod common;
use common::*;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(10);

/// What a soak watches in a process: open descriptors, resident memory, threads.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

fn figures(pid: u32) -> Figures {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let rss_kib = proc_status(pid, "VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"));
    let threads = proc_status(pid, "Threads").and_then(|v| v.parse().ok()).unwrap();
    Figures { fds, rss_kib, threads }
}

/// Waits (up to 5 s) until the process is back to `start`'s descriptors and threads.
fn settled(pid: u32, start: Figures) -> Figures {
    wait_until(Duration::from_secs(5), || {
        let now = figures(pid);
        now.fds == start.fds && now.threads == start.threads
    });
    figures(pid)
}

/// Checks a soaked series: exactly `keep` snapshots, every one good, no leftovers.
fn check_series(series: &Path, keep: usize) {
    let entries: Vec<String> = std::fs::read_dir(series)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!entries.iter().any(|name| name.starts_with(".tmp-")), "leftovers: {entries:?}");
    let opened = opalcrs::snapshot::Series::at(series);
    let snapshots = opened.snapshots().unwrap();
    assert_eq!(snapshots.len(), keep, "snapshots {snapshots:?}; entries {entries:?}");
    for seq in snapshots {
        let verdict = opalcrs::snapshot::verify(&opened.snapshot_dir(seq));
        assert_eq!(verdict, opalcrs::snapshot::Verdict::Good, "snapshot {seq}");
    }
}

/// Makes this test process the reaper of its descendants' orphans. PID 1 here does not
/// reap orphans: a killed orphan (a restored process whose opal-restart has ended, a
/// forked child whose parent was killed) would stay a zombie and keep its PID, which
/// forces a later restore of that PID into a new PID namespace.
fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Reaps the zombies of `criu` helpers that became our children. The criu component
/// double-forks its `criu swrk` helper, so the helper's parent is the nearest subreaper
/// (us, see `become_subreaper`) or PID 1, which here never reaps: without this each
/// criu checkpoint would leave a zombie behind.
fn reap_criu_helpers() {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let ours = proc_status(pid as u32, "PPid").is_some_and(|parent| parent == me);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if ours && comm.trim() == "criu" && !alive(pid as u32) {
            // SAFETY: waitpid on one zombie child, no status wanted.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// SIGKILLs a restored process (not a `Child` of ours) and reaps it if it has become
/// our child; waits until it is no longer running.
fn end_restored(pid: u32) {
    kill(pid);
    let me = std::process::id().to_string();
    let ended = wait_until(LONG, || {
        // SAFETY: waitpid on one PID, no status wanted.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        // Gone, or a zombie that is someone else's to reap.
        !alive(pid) && proc_status(pid, "PPid").map_or(true, |parent| parent != me)
    });
    assert!(ended, "process {pid} not ended after SIGKILL: {:?}", proc_status(pid, "State"));
}

fn print_figures(what: &str, start: Figures, warm: Figures, end: Figures, took: Duration) {
    eprintln!(
        "{what}: {took:.2?}; start fds={} rss={} KiB threads={}; after warm-up fds={} \
         rss={} KiB threads={}; end fds={} rss={} KiB threads={} (rss {:+} KiB)",
        start.fds,
        start.rss_kib,
        start.threads,
        warm.fds,
        warm.rss_kib,
        warm.threads,
        end.fds,
        end.rss_kib,
        end.threads,
        end.rss_kib as i64 - start.rss_kib as i64
    );
}

#[test]
fn soak_self_1000_checkpoints_leak_nothing() {
    let sb = Sandbox::new("soak-self");
    let mut command = sb.command(cc("selfapp.c", "selfapp", &[]));
    command
        .arg(sb.path("log"))
        .env("OMPI_MCA_crs_base_snapshot_keep", "3")
        .env("OMPI_MCA_crs_base_snapshot_fsync", "0");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let ready = format!("init rc=0 pid={pid} ");
    assert!(wait_until(LONG, || sb.read("log").contains(&ready)), "{}", sb.read("app.out"));
    let start = figures(pid);
    let pid_arg = pid.to_string();

    let began = Instant::now();
    let mut warm = start;
    let mut rss_every_100 = Vec::new();
    for n in 0..1000 {
        let out = sb.checkpoint(&[&pid_arg]);
        assert!(out.status.success(), "checkpoint {n}: {:?}", text(&out));
        if n == 9 {
            warm = figures(pid);
        }
        if n % 100 == 99 {
            rss_every_100.push(figures(pid).rss_kib);
        }
    }
    eprintln!("soak self: RSS (KiB) after every 100 checkpoints: {rss_every_100:?}");
    let took = began.elapsed();
    let end = settled(pid, start);
    print_figures("soak self, 1000 checkpoints", start, warm, end, took);

    assert_eq!(sb.read("log").matches("checkpoint default").count(), 1000);
    assert_eq!(end.fds, start.fds, "descriptors leaked: {start:?} -> {end:?}");
    assert_eq!(end.threads, start.threads, "threads leaked: {start:?} -> {end:?}");
    // RSS grows in steps of about 1.1 MiB at irregular points (the malloc arena of the
    // library's service thread, 1-3 steps per 1000 checkpoints here), not steadily:
    // bound the total, and the second half so that a steady leak of more than
    // about 3 KiB per checkpoint fails.
    assert!(end.rss_kib < start.rss_kib + 6144, "RSS grew: {start:?} -> {end:?}");
    let half = rss_every_100[..5].iter().copied().max().unwrap();
    assert!(end.rss_kib < half + 1536, "RSS grew by {} KiB over the last 500", end.rss_kib - half);
    check_series(&sb.path(&format!("opal_snapshot_{pid}.ckpt")), 3);
    assert!(took < Duration::from_secs(60), "1000 checkpoints took {took:?}");
    stop(&mut app);
}

/// One line of plain_counter's count file: (count, pid, ok).
fn counter_lines(text: &str) -> Vec<(i64, u32, bool)> {
    text.split_inclusive('\n')
        .filter_map(|line| {
            let mut words = line.strip_suffix('\n')?.split_whitespace();
            let n = words.next()?.parse().ok()?;
            let pid = words.next()?.parse().ok()?;
            Some((n, pid, words.next()? == "ok"))
        })
        .collect()
}

#[test]
fn soak_criu_100_checkpoints_leak_nothing() {
    require_criu!();
    let sb = Sandbox::new("soak-criu");
    become_subreaper();
    let mut command = sb.command(cc("plain_counter.c", "plain_counter", &[]));
    command
        .arg(sb.path("count"))
        .arg("1")
        .env("OMPI_MCA_crs", "criu")
        .env("OMPI_MCA_crs_base_snapshot_keep", "2")
        .env("OMPI_MCA_crs_base_snapshot_fsync", "0");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let started = wait_until(LONG, || counter_lines(&sb.read("count")).len() >= 2);
    assert!(started, "plain_counter did not start: {}", sb.read("app.out"));
    let start = figures(pid);
    let pid_arg = pid.to_string();

    let began = Instant::now();
    let mut warm = start;
    let mut rss_every_10 = Vec::new();
    for n in 0..100 {
        let out = sb.checkpoint(&[&pid_arg]);
        assert!(out.status.success(), "checkpoint {n}: {:?}", text(&out));
        if n == 9 {
            warm = figures(pid);
        }
        if n % 10 == 9 {
            rss_every_10.push(figures(pid).rss_kib);
        }
    }
    eprintln!("soak criu: RSS (KiB) after every 10 checkpoints: {rss_every_10:?}");
    let took = began.elapsed();
    let end = settled(pid, start);
    print_figures("soak criu, 100 checkpoints", start, warm, end, took);

    assert_eq!(end.fds, start.fds, "descriptors leaked: {start:?} -> {end:?}");
    assert_eq!(end.threads, start.threads, "threads leaked: {start:?} -> {end:?}");
    // As with self: a warm-up step of about 1 MiB early on, then flat.
    assert!(end.rss_kib < start.rss_kib + 4096, "RSS grew: {start:?} -> {end:?}");
    let half = rss_every_10[..5].iter().copied().max().unwrap();
    assert!(end.rss_kib < half + 512, "RSS grew by {} KiB over the last 50", end.rss_kib - half);
    check_series(&sb.path(&format!("opal_snapshot_{pid}.ckpt")), 2);
    // The counter still counts, its memory intact.
    let lines = counter_lines(&sb.read("count")).len();
    assert!(wait_until(LONG, || counter_lines(&sb.read("count")).len() >= lines + 3));
    let all = counter_lines(&sb.read("count"));
    assert!(all.iter().all(|&(_, p, ok)| ok && p == pid), "{:?}", &all[all.len() - 5..]);
    assert!(took < Duration::from_secs(90), "100 checkpoints took {took:?}");
    stop(&mut app);
    reap_criu_helpers();
}

/// The worker lines of a soak_threads log: (thread, count, pid, ok).
fn worker_lines(log: &str) -> Vec<(usize, i64, u32, bool)> {
    log.split_inclusive('\n')
        .filter_map(|line| {
            let mut words = line.strip_suffix('\n')?.split_whitespace();
            let thread = words.next()?.strip_prefix('t')?.parse().ok()?;
            let n = words.next()?.parse().ok()?;
            let pid = words.next()?.parse().ok()?;
            Some((thread, n, pid, words.next()? == "ok"))
        })
        .collect()
}

/// Whether every one of the four workers has logged at least `lines` lines.
fn all_workers_logged(log: &str, lines: usize) -> bool {
    let workers = worker_lines(log);
    (0..4).all(|t| workers.iter().filter(|w| w.0 == t).count() >= lines)
}

fn start_threads(sb: &Sandbox, program: &Path, env: &[(&str, &str)]) -> Child {
    let mut command = sb.command(program);
    command.arg(sb.path("log"));
    for (k, v) in env {
        command.env(k, v);
    }
    let child = sb.spawn(command, "app");
    let running = wait_until(LONG, || all_workers_logged(&sb.read("log"), 2));
    assert!(running, "soak_threads did not start: {}{}", sb.read("log"), sb.read("app.out"));
    child
}

fn numbers(line: &str) -> Vec<i64> {
    line.split_whitespace().filter_map(|w| w.parse().ok()).collect()
}

#[test]
fn threads_self_callback_saves_and_restores_every_counter() {
    let sb = Sandbox::new("soak-threads-self");
    become_subreaper();
    let program = cc("soak_threads.c", "soak_threads", &["-lpthread"]);
    let mut app = start_threads(&sb, &program, &[]);
    let pid = app.id();
    let snapshot = checkpoint_ok(&sb, &[&pid.to_string()]).1;
    let state = numbers(&std::fs::read_to_string(snapshot.join("state")).unwrap());
    assert_eq!(state.len(), 5, "{state:?}");
    assert_eq!(state[..4].iter().sum::<i64>(), state[4], "inconsistent save {state:?}");
    assert!(state[..4].iter().all(|&c| c > 0), "a worker had not counted: {state:?}");
    assert!(wait_until(LONG, || sb.read("log").contains("\ncontinue\n")));
    kill_and_reap(&mut app);

    let before = sb.read("log").len();
    let series = format!("opal_snapshot_{pid}.ckpt");
    let (restarted, stderr) = restart_fork(&sb, &[&series]);
    let grown = wait_until(LONG, || all_workers_logged(&sb.read("log")[before..], 3));
    let after = sb.read("log")[before..].to_string();
    assert!(grown, "not every worker went on after the restart: {after}\n{stderr}");
    let restored = after.lines().find(|l| l.starts_with("restored ")).unwrap_or_else(|| {
        panic!("no restored line: {after}");
    });
    assert_eq!(numbers(restored), state, "{after}");
    let workers = worker_lines(&after);
    for (t, &saved) in state[..4].iter().enumerate() {
        let mine: Vec<_> = workers.iter().filter(|w| w.0 == t).collect();
        assert!(mine.iter().all(|w| w.2 == restarted && w.3), "thread {t}: {mine:?}");
        // Each thread continues from its saved counter, not from zero.
        assert!(mine[0].1 > saved && mine[0].1 <= saved + 200, "thread {t}: {mine:?}");
        assert!(mine.windows(2).all(|w| w[1].1 > w[0].1), "thread {t}: {mine:?}");
    }
    eprintln!("threads self: saved {state:?}, restarted as {restarted}");
    end_restored(restarted);
}

#[test]
fn threads_criu_all_workers_keep_counting() {
    require_criu!();
    let sb = Sandbox::new("soak-threads-criu");
    become_subreaper();
    let program = cc("soak_threads.c", "soak_threads_plain", &["-DSOAK_NO_SELF", "-lpthread"]);
    let mut app = start_threads(&sb, &program, &[("OMPI_MCA_crs", "criu")]);
    let pid = app.id();
    checkpoint_ok(&sb, &[&pid.to_string()]);
    assert!(wait_until(LONG, || all_workers_logged(&sb.read("log"), 4)));
    kill_and_reap(&mut app);
    let log_at_kill = sb.read("log");
    let at_kill = worker_lines(&log_at_kill);

    let (restored, stderr) = restart_fork(&sb, &[&format!("opal_snapshot_{pid}.ckpt")]);
    assert_eq!(restored, pid, "restored under another PID; stderr: {stderr}");
    let grown = wait_until(LONG, || all_workers_logged(&sb.read("log")[log_at_kill.len()..], 3));
    let after = sb.read("log")[log_at_kill.len()..].to_string();
    assert!(grown, "not every worker went on after the restore: {after}\n{stderr}");
    let workers = worker_lines(&after);
    let mut firsts = Vec::new();
    for t in 0..4 {
        let mine: Vec<_> = workers.iter().filter(|w| w.0 == t).collect();
        let last_before = at_kill.iter().filter(|w| w.0 == t).map(|w| w.1).max().unwrap();
        assert!(mine.iter().all(|w| w.2 == pid && w.3), "thread {t}: {mine:?}");
        assert!(mine.windows(2).all(|w| w[1].1 > w[0].1), "thread {t}: {mine:?}");
        // The image was taken before the kill: each counter resumes at or below where
        // the killed process had got to (one logging step of slack), never from zero.
        assert!(mine[0].1 > 200 && mine[0].1 <= last_before + 200, "thread {t}: {mine:?}");
        firsts.push((mine[0].1, last_before));
    }
    eprintln!("threads criu: first count after restore / last before kill per thread {firsts:?}");
    end_restored(restored);
    reap_criu_helpers();
}

/// (count, pid) lines of a soak_tree count file.
fn tree_lines(text: &str) -> Vec<(i64, u32)> {
    text.split_inclusive('\n')
        .filter_map(|line| {
            let mut words = line.strip_suffix('\n')?.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn process_tree_criu_restores_parent_and_child() {
    require_criu!();
    let sb = Sandbox::new("soak-tree");
    let mut command = sb.command(cc("soak_tree.c", "soak_tree", &[]));
    command.arg(sb.path("parent")).arg(sb.path("child")).env("OMPI_MCA_crs", "criu");
    // The orphaned child must be reaped before the restore, or its PID stays taken.
    become_subreaper();
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let both = wait_until(LONG, || {
        tree_lines(&sb.read("parent")).len() >= 2 && tree_lines(&sb.read("child")).len() >= 2
    });
    assert!(both, "soak_tree did not start: {}", sb.read("app.out"));
    let child_pid = tree_lines(&sb.read("child"))[0].1;
    sb.adopt(child_pid);
    assert_ne!(child_pid, pid);

    checkpoint_ok(&sb, &[&pid.to_string()]);
    kill_and_reap(&mut app);
    // The orphaned child is re-parented to this test process (a subreaper, see above),
    // which reaps it so that its PID is free for the restore.
    kill_and_reap_orphan(child_pid);
    let (parent_at_kill, child_at_kill) =
        (tree_lines(&sb.read("parent")).len(), tree_lines(&sb.read("child")).len());

    let (restored, stderr) = restart_fork(&sb, &[&format!("opal_snapshot_{pid}.ckpt")]);
    assert_eq!(restored, pid, "restored under another PID; stderr: {stderr}");
    let grown = wait_until(LONG, || {
        tree_lines(&sb.read("parent")).len() >= parent_at_kill + 3
            && tree_lines(&sb.read("child")).len() >= child_at_kill + 3
    });
    let (parent, child) = (tree_lines(&sb.read("parent")), tree_lines(&sb.read("child")));
    assert!(
        grown,
        "parent {} lines ({parent_at_kill} at kill), child {} lines ({child_at_kill} at kill)",
        parent.len(),
        child.len()
    );
    assert!(parent[parent_at_kill..].iter().all(|&(_, p)| p == pid), "{parent:?}");
    assert!(child[child_at_kill..].iter().all(|&(_, p)| p == child_pid), "{child:?}");
    assert!(alive(child_pid), "restored child {child_pid} not alive");
    assert_eq!(proc_status(child_pid, "PPid").as_deref(), Some(pid.to_string().as_str()));
    eprintln!(
        "process tree: parent {pid} and child {child_pid} restored; child resumed at {}",
        child[child_at_kill].0
    );
    // The parent first, so that the child is not left a zombie of a live parent.
    end_restored(restored);
    end_restored(child_pid);
    reap_criu_helpers();
}

/// SIGKILLs a process that is not our `Child` and, if it has become our child (we are a
/// subreaper), reaps it; waits until its PID has left /proc.
fn kill_and_reap_orphan(pid: u32) {
    kill(pid);
    let gone = wait_until(LONG, || {
        // SAFETY: waitpid on one PID, no status wanted.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "process {pid} still in /proc after SIGKILL: {:?}", proc_status(pid, "State"));
}

//! Parallel jobs: `opal-run -np N` as the launcher of N ranks (environment, signals,
//! failures), the global checkpoint through the launcher and the job restart, with the
//! ring program of c-tests/ring.c.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn run_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opal-run"))
}

fn ring() -> PathBuf {
    cc("ring.c", "ring", &["-pthread"])
}

/// `opal-run ARGS` in the sandbox, output in `<name>.out`.
fn launch(sb: &Sandbox, args: &[&str], env: &[(&str, &str)], name: &str) -> Child {
    let mut command = sb.command(run_tool());
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    sb.spawn(command, name)
}

fn finish(child: &mut Child, what: &str, sb: &Sandbox, name: &str) -> i32 {
    let status = wait_exit(child, LONG).unwrap_or_else(|| {
        stop(child);
        panic!("{what} did not end: {}", sb.read(&format!("{name}.out")))
    });
    status.code().unwrap_or(-1)
}

#[test]
fn each_rank_gets_its_place_and_the_parameters() {
    let sb = Sandbox::new("jobs-env");
    let script = r#"echo "$OMPI_COMM_WORLD_RANK $OMPI_COMM_WORLD_SIZE $OMPI_COMM_WORLD_LOCAL_RANK $OMPI_MCA_opal_cr_verbose $PPID" > rank.$OMPI_COMM_WORLD_RANK"#;
    let mut job =
        launch(&sb, &["-np", "3", "--mca", "opal_cr_verbose", "5", "sh", "-c", script], &[], "job");
    let launcher = job.id();
    assert_eq!(finish(&mut job, "the job", &sb, "job"), 0, "{}", sb.read("job.out"));
    for rank in 0..3 {
        assert_eq!(sb.read(&format!("rank.{rank}")), format!("{rank} 3 {rank} 5 {launcher}\n"));
    }
}

#[test]
fn a_failing_rank_ends_the_job_with_its_status() {
    let sb = Sandbox::new("jobs-fail");
    let script = r#"[ "$OMPI_COMM_WORLD_RANK" = 2 ] && exit 3; exec sleep 60"#;
    let started = std::time::Instant::now();
    let mut job = launch(&sb, &["-np", "4", "--", "sh", "-c", script], &[], "job");
    let ranks = children(job.id());
    assert_eq!(finish(&mut job, "the job", &sb, "job"), 3, "{}", sb.read("job.out"));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let out = sb.read("job.out");
    assert!(
        out.contains("opal-run: rank 2 (PID ")
            && out.contains("exited with status 3: ending the job"),
        "{out}"
    );
    for pid in ranks {
        assert!(!alive(pid), "rank {pid} still runs");
    }
}

#[test]
fn signals_reach_every_rank() {
    let sb = Sandbox::new("jobs-signal");
    let script = r#"trap 'echo term > got.$OMPI_COMM_WORLD_RANK; exit 0' TERM; touch up.$OMPI_COMM_WORLD_RANK; while :; do sleep 0.05; done"#;
    let mut job = launch(&sb, &["-np", "3", "sh", "-c", script], &[], "job");
    assert!(wait_until(LONG, || (0..3).all(|r| sb.path(&format!("up.{r}")).exists())));
    // SAFETY: plain kill of the launcher this test started.
    unsafe { libc::kill(job.id() as i32, libc::SIGTERM) };
    assert_eq!(finish(&mut job, "the job", &sb, "job"), 0, "{}", sb.read("job.out"));
    for rank in 0..3 {
        assert_eq!(sb.read(&format!("got.{rank}")), "term\n");
    }
}

#[test]
fn bad_rank_counts_and_missing_programs_are_refused() {
    let sb = Sandbox::new("jobs-usage");
    for bad in ["0", "-1", "x", "100000"] {
        let out = sb.command(run_tool()).args(["-np", bad, "true"]).output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(125), "-np {bad}: {stderr}");
        assert!(stderr.contains("-np takes a number of ranks from 1 to 4096"), "{stderr}");
    }
    let out = sb.command(run_tool()).args(["-np", "2", "./no-such-program"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", text(&out).1);
    assert!(text(&out).1.contains("cannot execute \"./no-such-program\""), "{}", text(&out).1);
}

/// The results the ranks of one ring run wrote, rank by rank.
fn ring_results(dir: &std::path::Path, size: usize) -> Vec<String> {
    (0..size)
        .map(|r| std::fs::read_to_string(dir.join(format!("ring.{r}.result"))).unwrap_or_default())
        .collect()
}

/// The results of a ring of `size` ranks and `rounds` rounds that nothing interrupts.
fn uninterrupted_ring(sb: &Sandbox, size: usize, rounds: &str) -> Vec<String> {
    let dir = sb.path("reference");
    std::fs::create_dir_all(&dir).unwrap();
    let (np, dir_arg) = (size.to_string(), dir.display().to_string());
    let ring = ring().display().to_string();
    let mut job =
        launch(sb, &["-np", &np, &ring, &dir_arg, rounds], &[("RING_DELAY_US", "0")], "ref");
    assert_eq!(finish(&mut job, "the reference ring", sb, "ref"), 0, "{}", sb.read("ref.out"));
    let results = ring_results(&dir, size);
    for (rank, line) in results.iter().enumerate() {
        assert!(line.starts_with(&format!("rank {rank} rounds {rounds} checksum ")), "{line}");
    }
    results
}

#[test]
fn the_ring_runs_to_its_end_under_the_launcher() {
    let sb = Sandbox::new("jobs-ring");
    uninterrupted_ring(&sb, 4, "200");
}

/// A running ring job of 4 ranks under `opal-run`, with its results in `dir`.
struct RingJob {
    launcher: Child,
    dir: PathBuf,
}

impl RingJob {
    /// Starts the job and waits until every rank has built the ring (rank 0 counts).
    fn start(sb: &Sandbox, name: &str, rounds: &str, env: &[(&str, &str)]) -> RingJob {
        let dir = sb.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ring = ring().display().to_string();
        let dir_arg = dir.display().to_string();
        let launcher = launch(sb, &["-np", "4", &ring, &dir_arg, rounds], env, name);
        let pid = launcher.id();
        assert!(
            wait_until(LONG, || children(pid).len() == 4
                && (0..4).all(|r| dir.join(format!("ring.{r}.sock")).exists())),
            "the ring did not start: {}",
            sb.read(&format!("{name}.out"))
        );
        RingJob { launcher, dir }
    }

    fn pid(&self) -> String {
        self.launcher.id().to_string()
    }

    fn series(&self) -> String {
        format!("ompi_global_snapshot_{}.ckpt", self.launcher.id())
    }

    /// SIGKILLs the launcher and every rank (its process group) and reaps the launcher.
    fn kill_all(&mut self) {
        let ranks = children(self.launcher.id());
        // SAFETY: the launcher leads its own process group (the sandbox's setsid).
        unsafe { libc::kill(-(self.launcher.id() as i32), libc::SIGKILL) };
        kill_and_reap(&mut self.launcher);
        assert!(wait_until(LONG, || ranks.iter().all(|&pid| !alive(pid))), "ranks survived");
    }
}

#[test]
fn a_self_job_checkpointed_through_its_launcher_restarts_to_the_uninterrupted_checksum() {
    let sb = Sandbox::new("jobs-self");
    let reference = uninterrupted_ring(&sb, 4, "3000");
    let mut job = RingJob::start(&sb, "job", "3000", &[]);
    let out = sb.checkpoint(&["-v", &job.pid()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let series = job.series();
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   0 {series}\n")), "{stdout}");
    for state in ["Requested", "Pending", "Running", "Locally Finished"] {
        assert!(stderr.contains(&format!("] {state} - ...")), "{state}: {stderr}");
    }
    for state in ["Checkpoint Established", "Continuing/Recovered"] {
        assert!(stderr.contains(&format!("] {state} - {series}")), "{state}: {stderr}");
    }
    let global = snapshot_path(&out);
    assert_eq!(global, sb.path(&series).join("0"));
    let meta = std::fs::read_to_string(global.join("global_snapshot_meta.data")).unwrap();
    assert!(meta.starts_with("# Seq: 0\n# Timestamp: "), "{meta}");
    let ranks = children(job.launcher.id());
    for (rank, pid) in ranks.iter().enumerate() {
        assert!(meta.contains(&format!("# Process: {rank} {pid}\n")), "{meta}");
        let state = global.join(format!("opal_snapshot_{rank}.ckpt/0/state"));
        assert!(state.is_file(), "{}", state.display());
    }
    assert!(meta.contains("# OPAL CRS Component: self\n"), "{meta}");
    let verify = sb.restart(&["--verify", &series]);
    assert!(verify.status.success(), "{:?}", text(&verify));

    job.kill_all();
    assert!(ring_results(&job.dir, 4).iter().all(String::is_empty), "the job ended already");
    // The same opal-run line, with the series named, restarts the job from it.
    let ring = ring().display().to_string();
    let dir_arg = job.dir.display().to_string();
    let mut again =
        launch(&sb, &["-np", "4", "-n", &series, &ring, &dir_arg, "3000"], &[], "again");
    let relaunched = again.id().to_string();
    // The restarted job's launcher can be checkpointed again, into the same series,
    // once its control socket is up (after it has started the ranks).
    assert!(wait_until(LONG, || sb.checkpoint(&["--status", &relaunched]).status.success()));
    let second = sb.checkpoint(&[&relaunched]);
    let (stdout, stderr) = text(&second);
    assert!(second.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   1 {series}\n")), "{stdout}");
    assert_eq!(
        finish(&mut again, "the restarted job", &sb, "again"),
        0,
        "{}",
        sb.read("again.out")
    );
    assert!(
        sb.read("again.out").contains(&format!(
            "opal-run: restarting the job of 4 ranks from global snapshot {} (component self)",
            global.display()
        )),
        "{}",
        sb.read("again.out")
    );
    assert_eq!(ring_results(&job.dir, 4), reference);
}

#[test]
fn a_rank_whose_callback_fails_publishes_nothing_and_the_job_goes_on() {
    let sb = Sandbox::new("jobs-fail-rank");
    let reference = uninterrupted_ring(&sb, 4, "1500");
    let mut job = RingJob::start(&sb, "job", "1500", &[("RING_FAIL_RANK", "2")]);
    let rank2 = children(job.launcher.id())[2];
    let out = sb.checkpoint(&[&job.pid()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr
            .contains(&format!("job checkpoint failed, nothing published: rank 2 (PID {rank2}): "))
            && stderr.contains("opal_crs_self_user_checkpoint"),
        "{stderr}"
    );
    let series = sb.path(&job.series());
    let entries: Vec<_> =
        std::fs::read_dir(&series).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries, [std::ffi::OsString::from(".lock")], "left in the series: {entries:?}");
    assert_eq!(finish(&mut job.launcher, "the job", &sb, "job"), 0, "{}", sb.read("job.out"));
    assert_eq!(ring_results(&job.dir, 4), reference);
}

#[test]
fn a_damaged_rank_makes_the_job_restart_from_the_previous_global_snapshot() {
    let sb = Sandbox::new("jobs-damaged");
    let reference = uninterrupted_ring(&sb, 4, "1500");
    let mut job = RingJob::start(&sb, "job", "1500", &[]);
    checkpoint_ok(&sb, &[&job.pid()]);
    let (_, newest) = checkpoint_ok(&sb, &[&job.pid()]);
    job.kill_all();
    // Rank 1's state in the newest global snapshot changes by one byte.
    let state = newest.join("opal_snapshot_1.ckpt/0/state");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let series = job.series();
    let verify = sb.restart(&["--verify", &series]);
    assert_eq!(verify.status.code(), Some(1), "{:?}", text(&verify));
    let mut restarted = sb.spawn(
        {
            let mut command = sb.command(restart_tool());
            command.arg(&series);
            command
        },
        "restart",
    );
    assert_eq!(
        finish(&mut restarted, "the restart", &sb, "restart"),
        0,
        "{}",
        sb.read("restart.out")
    );
    let out = sb.read("restart.out");
    assert!(
        out.contains("opal-restart: skipping snapshot 1: corrupt: opal_snapshot_1.ckpt/0/state"),
        "{out}"
    );
    assert_eq!(ring_results(&job.dir, 4), reference);
}

#[test]
fn the_checkpoint_signal_to_the_launcher_takes_a_global_snapshot() {
    let sb = Sandbox::new("jobs-usr1");
    let mut job = RingJob::start(&sb, "job", "100000", &[]);
    // SAFETY: plain kill of the launcher this test started.
    unsafe { libc::kill(job.launcher.id() as i32, libc::SIGUSR1) };
    let global = sb.path(&job.series()).join("0");
    assert!(
        wait_until(LONG, || global.join("global_snapshot_meta.data").is_file()),
        "no global snapshot: {}",
        sb.read("job.out")
    );
    let verify = sb.restart(&["--verify", &job.series()]);
    assert!(verify.status.success(), "{:?}", text(&verify));
    assert_eq!(children(job.launcher.id()).len(), 4, "the job did not go on");
    job.kill_all();
}

/// A pause of 0 to `max_ms` milliseconds, different each call.
fn random_pause(max_ms: u64) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            as u64;
    Duration::from_micros(nanos.wrapping_mul(2654435761) % (max_ms * 1000 + 1))
}

/// What is killed while the job checkpoint runs.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Tool,
    Rank,
}

/// A job with one good global snapshot gets a second checkpoint, and the tool or a rank
/// is SIGKILLed at a random point of it; then the whole job is killed. The newest good
/// global snapshot (the first, or the second if it completed) always restarts the job
/// to the uninterrupted checksum.
fn killed_during_a_job_checkpoint(victim: Victim, tries: usize) {
    let sb = Sandbox::new(&format!("jobs-kill-{victim:?}"));
    let reference = uninterrupted_ring(&sb, 4, "3000");
    for attempt in 0..tries {
        let name = format!("job{attempt}");
        let mut job = RingJob::start(&sb, &name, "3000", &[]);
        checkpoint_ok(&sb, &[&job.pid()]);
        let ranks = children(job.launcher.id());
        let mut tool = sb
            .command(checkpoint_tool())
            .arg(job.pid())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(random_pause(30));
        match victim {
            Victim::Tool => stop(&mut tool),
            Victim::Rank => kill(ranks[attempt % 4]),
        }
        let _ = wait_exit(&mut tool, LONG);
        job.kill_all();
        let series = job.series();
        let listing = sb.restart(&["--list", &series]);
        let (listed, _) = text(&listing);
        let mut restarted = sb.spawn(
            {
                let mut command = sb.command(restart_tool());
                command.arg(&series).env("RING_DELAY_US", "0");
                command
            },
            &format!("restart{attempt}"),
        );
        let log = format!("restart{attempt}");
        assert_eq!(
            finish(&mut restarted, "the restart", &sb, &log),
            0,
            "{victim:?} attempt {attempt}: {}\n{listed}",
            sb.read(&format!("{log}.out"))
        );
        assert_eq!(ring_results(&job.dir, 4), reference, "{victim:?} attempt {attempt}\n{listed}");
    }
}

#[test]
fn sigkill_of_the_tool_during_a_job_checkpoint_leaves_a_good_global_snapshot() {
    killed_during_a_job_checkpoint(Victim::Tool, 3);
}

#[test]
fn sigkill_of_a_rank_during_a_job_checkpoint_leaves_a_good_global_snapshot() {
    killed_during_a_job_checkpoint(Victim::Rank, 4);
}

/// criu: the job (ranks without self callbacks taken into account: `crs=criu`) is
/// dumped as the launcher's tree at one instant, killed, and restored by
/// `opal-restart`: the ring's connections (Unix sockets, or loopback TCP with
/// `tcp_port`) come back connected, the restored launcher can be checkpointed again,
/// and the checksum equals an uninterrupted run's.
fn criu_job_round_trip(tag: &str, tcp_port: Option<&str>) {
    let sb = Sandbox::new(&format!("jobs-criu-{tag}"));
    let reference = uninterrupted_ring(&sb, 4, "3000");
    let mut env = vec![("OMPI_MCA_crs", "criu"), ("OMPI_MCA_crs_criu_tcp_established", "1")];
    if let Some(port) = tcp_port {
        env.push(("RING_TCP_PORT", port));
    }
    let mut job = RingJob::start(&sb, "job", "3000", &env);
    let out = sb.checkpoint(&["-v", &job.pid()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}\n{}", sb.read("job.out"));
    let series = job.series();
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   0 {series}\n")), "{stdout}");
    let global = snapshot_path(&out);
    let meta = std::fs::read_to_string(global.join("global_snapshot_meta.data")).unwrap();
    assert!(meta.contains("# OPAL CRS Component: criu\n"), "{meta}");
    // One image set: the launcher's and every rank's process image side by side.
    let launcher = job.launcher.id();
    for pid in std::iter::once(launcher).chain(children(launcher)) {
        assert!(global.join(format!("core-{pid}.img")).is_file(), "no image of {pid}");
    }
    job.kill_all();
    assert!(ring_results(&job.dir, 4).iter().all(String::is_empty), "the job ended already");

    let mut restarted = sb.spawn(
        {
            let mut command = sb.command(restart_tool());
            command.arg(&series);
            for (k, v) in &env {
                command.env(k, v);
            }
            command
        },
        "restart",
    );
    // The restored launcher (the original's PID) answers again once it is out of the
    // restored dump (before, the tool only learns "checkpointing"), and is checkpointed
    // again.
    let pid = launcher.to_string();
    let answers = || {
        let status = sb.checkpoint(&["--status", &pid]);
        status.status.success() && text(&status).0.contains("Component: job\n")
    };
    assert!(
        wait_until(LONG, answers),
        "the restored launcher does not answer: {}",
        sb.read("restart.out")
    );
    let again = sb.checkpoint(&[&pid]);
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stdout}{stderr}\n{}", sb.read("restart.out"));
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   1 {series}\n")), "{stdout}");
    assert_eq!(
        finish(&mut restarted, "the restart", &sb, "restart"),
        0,
        "{}",
        sb.read("restart.out")
    );
    assert_eq!(ring_results(&job.dir, 4), reference);
}

#[test]
fn a_criu_job_over_unix_sockets_restarts_to_the_uninterrupted_checksum() {
    require_criu!();
    criu_job_round_trip("unix", None);
}

#[test]
fn a_criu_job_over_loopback_tcp_restarts_to_the_uninterrupted_checksum() {
    require_criu!();
    criu_job_round_trip("tcp", Some("41260"));
}

#[test]
fn the_interval_takes_global_snapshots_and_the_ranks_take_none_of_their_own() {
    // The ranks get neither the interval nor the job's series name.
    let sb = Sandbox::new("jobs-interval");
    let ring = ring().display().to_string();
    let dir = sb.path("job");
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.display().to_string();
    let args = ["-np", "4", "-mca", "opal_cr_checkpoint_interval", "1", &ring, &dir_arg, "100000"];
    let env = [("OMPI_MCA_crs_base_snapshot_name", "named.ckpt")];
    let mut job = RingJob { launcher: launch(&sb, &args, &env, "job"), dir };
    let series = sb.path("named.ckpt");
    assert!(
        wait_until(LONG, || series.join("1/global_snapshot_meta.data").is_file()),
        "no second global snapshot: {}",
        sb.read("job.out")
    );
    for rank in children(job.launcher.id()) {
        let environ = std::fs::read(format!("/proc/{rank}/environ")).unwrap();
        for name in ["OMPI_MCA_opal_cr_checkpoint_interval=", "OMPI_MCA_crs_base_snapshot_name="] {
            let given = environ.split(|&b| b == 0).any(|var| var.starts_with(name.as_bytes()));
            assert!(!given, "rank {rank} has {name}");
        }
    }
    // Every snapshot in the sandbox is the job's: no rank checkpointed itself.
    let others: Vec<_> = std::fs::read_dir(&sb.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("opal_snapshot_"))
        .collect();
    assert!(others.is_empty(), "ranks' own series: {others:?}");
    job.kill_all();
}

/// The uids of a process (real, effective, saved, filesystem).
fn uids(pid: u32) -> String {
    proc_status(pid, "Uid").unwrap_or_default()
}

#[test]
fn a_users_job_is_checkpointed_by_root_refused_to_others_and_restarted_as_the_user() {
    let (Some(user), Some(other)) = (TempUser::create("job"), TempUser::create("jobx")) else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("jobs-privilege");
    let home = user.home_in(&sb);
    let other_home = other.home_in(&sb);
    let ring = sb.copy_program(&ring(), "ring");
    let run = sb.copy_program(&run_tool(), "opal-run");
    let tool = sb.copy_program(&checkpoint_tool(), "opal-checkpoint");
    sb.copy_program(&lib_dir().join("libopalcrs.so"), "libopalcrs.so.0");
    let home_arg = home.display().to_string();
    let mut command = user.command(&sb, &run, &home);
    command.env("LD_LIBRARY_PATH", &sb.dir).args(["-np", "2", "-w", &home_arg, "-n", "job.ckpt"]);
    command.arg(&ring).args([&home_arg, "100000"]);
    let mut launcher = sb.spawn(command, "job");
    let pid = launcher.id().to_string();
    let up = || (0..2).all(|r| home.join(format!("ring.{r}.sock")).exists());
    assert!(wait_until(LONG, up), "{}", sb.read("job.out"));
    let ranks = children(launcher.id());
    assert_eq!(uids(launcher.id()), format!("{0}\t{0}\t{0}\t{0}", user.uid));

    // Another user may not ask; root may, and the user's launcher writes as the user.
    let refused = other.command(&sb, &tool, &other_home).arg(&pid).output().unwrap();
    assert_eq!(refused.status.code(), Some(4), "{:?}", text(&refused));
    let (_, global) = checkpoint_ok(&sb, &[&pid]);
    assert_eq!(global, home.join("job.ckpt/0"));
    assert_eq!(std::fs::metadata(&global).unwrap().uid(), user.uid);

    // SAFETY: the launcher leads its own process group (the sandbox's setsid).
    unsafe { libc::kill(-(launcher.id() as i32), libc::SIGKILL) };
    kill_and_reap(&mut launcher);
    assert!(wait_until(LONG, || ranks.iter().all(|&r| !alive(r))));

    // Root restarts it: the launcher and the ranks are the user's, and the user may
    // checkpoint the restarted job.
    let series = home.join("job.ckpt");
    let mut restart = sb.command(restart_tool());
    restart.env("LD_LIBRARY_PATH", &sb.dir).arg(&series);
    let mut restarted = sb.spawn(restart, "restart");
    let back = || (0..2).all(|r| home.join(format!("ring.{r}.restarted")).exists());
    assert!(wait_until(LONG, back), "{}", sb.read("restart.out"));
    let user_uids = format!("{0}\t{0}\t{0}\t{0}", user.uid);
    assert_eq!(uids(restarted.id()), user_uids, "the restarted launcher");
    for rank in children(restarted.id()) {
        assert_eq!(uids(rank), user_uids, "restarted rank {rank}");
    }
    let again = user.command(&sb, &tool, &home).arg(restarted.id().to_string()).output().unwrap();
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("Snapshot Ref.:   1 job.ckpt\n"), "{stdout}");
    // SAFETY: the restart leads its own process group (the sandbox's setsid).
    unsafe { libc::kill(-(restarted.id() as i32), libc::SIGKILL) };
    kill_and_reap(&mut restarted);
}

#[test]
fn keep_prunes_a_global_series_as_any_series() {
    let sb = Sandbox::new("jobs-keep");
    let mut job = RingJob::start(&sb, "job", "100000", &[("OMPI_MCA_crs_base_snapshot_keep", "1")]);
    checkpoint_ok(&sb, &[&job.pid()]);
    let (_, newest) = checkpoint_ok(&sb, &[&job.pid()]);
    let series = sb.path(&job.series());
    assert_eq!(newest, series.join("1"));
    assert!(!series.join("0").exists(), "snapshot 0 was kept");
    let listing = sb.restart(&["--list", &job.series()]);
    let (listed, _) = text(&listing);
    assert!(listing.status.success() && listed.contains("  good"), "{listed}");
    job.kill_all();
}

/// SIGKILLs `launcher` alone and asserts that every one of `ranks` ends within seconds.
fn ranks_end_with_their_launcher(launcher: &mut Child, ranks: &[u32], sb: &Sandbox, log: &str) {
    assert!(!ranks.is_empty(), "no ranks: {}", sb.read(log));
    kill_and_reap(launcher);
    let gone = wait_until(Duration::from_secs(5), || ranks.iter().all(|&pid| !alive(pid)));
    let survivors: Vec<u32> = ranks.iter().copied().filter(|&pid| alive(pid)).collect();
    for &pid in &survivors {
        kill(pid);
    }
    assert!(gone, "ranks {survivors:?} outlived their launcher: {}", sb.read(log));
}

#[test]
fn the_ranks_end_when_their_launcher_is_sigkilled() {
    let sb = Sandbox::new("jobs-orphans");
    let script = r#"touch up.$OMPI_COMM_WORLD_RANK; exec sleep 60"#;
    let mut job = launch(&sb, &["-np", "3", "sh", "-c", script], &[], "job");
    assert!(wait_until(LONG, || (0..3).all(|r| sb.path(&format!("up.{r}")).exists())));
    let ranks = children(job.id());
    ranks_end_with_their_launcher(&mut job, &ranks, &sb, "job.out");
}

#[test]
fn the_ranks_of_a_restarted_self_job_end_when_its_launcher_is_sigkilled() {
    let sb = Sandbox::new("jobs-orphans-self");
    let mut job = RingJob::start(&sb, "job", "100000", &[]);
    checkpoint_ok(&sb, &[&job.pid()]);
    job.kill_all();
    let mut command = sb.command(restart_tool());
    command.arg(job.series());
    let mut restarted = sb.spawn(command, "restart");
    let back = || (0..4).all(|r| job.dir.join(format!("ring.{r}.restarted")).exists());
    assert!(wait_until(LONG, back), "{}", sb.read("restart.out"));
    let ranks = children(restarted.id());
    ranks_end_with_their_launcher(&mut restarted, &ranks, &sb, "restart.out");
}

#[test]
fn the_ranks_of_a_restored_criu_job_end_when_its_launcher_is_sigkilled() {
    require_criu!();
    let sb = Sandbox::new("jobs-orphans-criu");
    let env = [("OMPI_MCA_crs", "criu")];
    let mut job = RingJob::start(&sb, "job", "100000", &env);
    let launcher = job.launcher.id();
    checkpoint_ok(&sb, &[&job.pid()]);
    job.kill_all();
    let mut command = sb.command(restart_tool());
    command.arg(job.series()).envs(env);
    let mut restarted = sb.spawn(command, "restart");
    // The restored launcher has its old PID, and its ranks under it. It answers once the
    // restore is over: a rank killed while CRIU still restores it has no parent-death
    // signal yet (seen once in CI under load). The restore's end took up to 20 s here.
    assert!(
        wait_until(3 * LONG, || alive(launcher)
            && children(launcher).len() == 4
            && sb.checkpoint(&["--status", &launcher.to_string()]).status.success()),
        "{}",
        sb.read("restart.out")
    );
    let ranks = children(launcher);
    kill(launcher);
    let gone = wait_until(Duration::from_secs(5), || ranks.iter().all(|&pid| !alive(pid)));
    let survivors: Vec<u32> = ranks.iter().copied().filter(|&pid| alive(pid)).collect();
    for &pid in &survivors {
        kill(pid);
    }
    let _ = wait_exit(&mut restarted, LONG);
    kill_and_reap(&mut restarted);
    assert!(gone, "ranks {survivors:?} outlived their launcher: {}", sb.read("restart.out"));
}

#[test]
fn a_job_series_whose_global_snapshots_are_all_damaged_starts_fresh_with_a_warning() {
    let sb = Sandbox::new("jobs-all-damaged");
    let reference = uninterrupted_ring(&sb, 4, "1500");
    let mut job = RingJob::start(&sb, "job", "1500", &[]);
    let (_, global) = checkpoint_ok(&sb, &[&job.pid()]);
    job.kill_all();
    let state = global.join("opal_snapshot_2.ckpt/0/state");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let series = job.series();
    let (ring, dir_arg) = (ring().display().to_string(), job.dir.display().to_string());
    let mut again =
        launch(&sb, &["-np", "4", "-n", &series, &ring, &dir_arg, "1500"], &[], "again");
    let status = finish(&mut again, "the fresh job", &sb, "again");
    let out = sb.read("again.out");
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains(&format!("opal-run: warning: series {} has no good snapshot (1 skipped: 0: corrupt: opal_snapshot_2.ckpt/0/state", sb.path(&series).display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "opal-run: no good snapshot in series {}: starting 4 ranks of {ring} fresh",
            sb.path(&series).display()
        )),
        "{out}"
    );
    assert_eq!(ring_results(&job.dir, 4), reference);
}

#[test]
fn opal_run_passes_signals_on_to_a_restored_criu_job() {
    require_criu!();
    let sb = Sandbox::new("jobs-criu-signals");
    let env = [("OMPI_MCA_crs", "criu")];
    let mut job = RingJob::start(&sb, "job", "100000", &env);
    let launcher = job.launcher.id();
    checkpoint_ok(&sb, &[&job.pid()]);
    job.kill_all();
    let series = job.series();
    let (ring, dir_arg) = (ring().display().to_string(), job.dir.display().to_string());
    let mut again =
        launch(&sb, &["-np", "4", "-n", &series, &ring, &dir_arg, "100000"], &env, "again");
    let pid = launcher.to_string();
    let answers = || {
        let status = sb.checkpoint(&["--status", &pid]);
        status.status.success() && text(&status).0.contains("Component: job\n")
    };
    assert!(wait_until(LONG, answers), "not restored: {}", sb.read("again.out"));
    let ranks = children(launcher);
    // USR1 reaches the restored launcher: a job checkpoint; TERM reaches the ranks
    // through it: the job ends with their status.
    // SAFETY: plain kill of the opal-run this test started.
    unsafe { libc::kill(again.id() as i32, libc::SIGUSR1) };
    let second = sb.path(&series).join("1/global_snapshot_meta.data");
    let checkpointed = wait_until(LONG, || second.is_file());
    // SAFETY: as above.
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut again, LONG).map(|s| s.code());
    let out = sb.read("again.out");
    kill(launcher);
    let ranks_gone = wait_until(LONG, || ranks.iter().all(|&r| !alive(r)));
    stop(&mut again);
    assert!(checkpointed, "USR1 took no job checkpoint: {out}");
    assert_eq!(status, Some(Some(143)), "{out}");
    assert!(ranks_gone, "{out}");
}

/// `opal-checkpoint --term <launcher>`: the global snapshot is published, then every
/// rank and the launcher end (the launcher with status 0, as one process does), and the
/// snapshot restarts the job to the uninterrupted checksum.
fn term_ends_the_job_after_its_checkpoint(tag: &str, env: &[(&str, &str)]) {
    let sb = Sandbox::new(&format!("jobs-term-{tag}"));
    let reference = uninterrupted_ring(&sb, 4, "3000");
    let mut job = RingJob::start(&sb, "job", "3000", env);
    let ranks = children(job.launcher.id());
    let out = sb.checkpoint(&["-v", "--term", &job.pid()]);
    let (stdout, stderr) = text(&out);
    let series = job.series();
    let ended = wait_exit(&mut job.launcher, LONG).map(|s| s.code());
    let ranks_gone = wait_until(Duration::from_secs(5), || ranks.iter().all(|&r| !alive(r)));
    if ended.is_none() || !ranks_gone {
        job.kill_all();
    }
    assert!(out.status.success(), "{stdout}{stderr}\n{}", sb.read("job.out"));
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   0 {series}\n")), "{stdout}");
    assert!(stderr.contains(&format!("] Terminated - {series}")), "{stderr}");
    assert_eq!(ended, Some(Some(0)), "the launcher: {}", sb.read("job.out"));
    assert!(ranks_gone, "ranks outlived the --term checkpoint");
    assert!(ring_results(&job.dir, 4).iter().all(String::is_empty), "the job ran to its end");

    let mut command = sb.command(restart_tool());
    command.arg(&series).envs(env.iter().copied());
    let mut restarted = sb.spawn(command, "restart");
    let status = finish(&mut restarted, "the restart", &sb, "restart");
    assert_eq!(status, 0, "{}", sb.read("restart.out"));
    assert_eq!(ring_results(&job.dir, 4), reference);
}

#[test]
fn term_checkpoints_a_self_job_and_ends_it() {
    term_ends_the_job_after_its_checkpoint("self", &[]);
}

#[test]
fn term_checkpoints_a_criu_job_and_ends_it() {
    require_criu!();
    term_ends_the_job_after_its_checkpoint("criu", &[("OMPI_MCA_crs", "criu")]);
}

/// A job ended by a signal passed on to its ranks exits with 128+N, whatever a rank
/// makes of the signal (here rank 1 exits 70 on TERM, as a ring rank does whose
/// neighbour went first; the job exited 70 before, now and then in
/// `opal_run_passes_signals_on_to_a_restored_criu_job`).
#[test]
fn a_job_ended_by_a_signal_exits_with_that_signal() {
    let sb = Sandbox::new("jobs-term-status");
    let script = "trap 'exit $((70 * OMPI_COMM_WORLD_RANK))' TERM; echo up >> \"$0\"; \
                  while :; do sleep 0.05; done";
    let marks = sb.path("up");
    let mut job =
        launch(&sb, &["-np", "2", "sh", "-c", script, marks.to_str().unwrap()], &[], "job");
    let both_up = || std::fs::read_to_string(&marks).is_ok_and(|s| s.lines().count() == 2);
    assert!(wait_until(LONG, both_up), "{}", sb.read("job.out"));
    // SAFETY: plain kill of the opal-run this test started.
    unsafe { libc::kill(job.id() as i32, libc::SIGTERM) };
    let status = finish(&mut job, "the job", &sb, "job");
    assert_eq!(status, 143, "{}", sb.read("job.out"));
}

#[test]
fn a_second_job_checkpoint_is_in_progress_or_queued_with_wait() {
    let sb = Sandbox::new("jobs-wait");
    // Large rank states make the first checkpoint last long enough to be caught.
    let mut job = RingJob::start(&sb, "job", "100000", &[("RING_STATE_BYTES", "67108864")]);
    let launcher = job.pid();
    let mut first = sb.command(checkpoint_tool());
    first.arg(&launcher).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    let status = || {
        let out = sb.checkpoint(&["--status", &launcher]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(wait_until(LONG, || status().contains("checkpointing")), "never checkpointing");
    let refused = sb.checkpoint(&[&launcher]);
    let queued = sb.checkpoint(&["--wait", &launcher]);
    let first = first.wait_with_output().unwrap();
    job.kill_all();
    assert!(first.status.success(), "{:?}", text(&first));
    assert_eq!(refused.status.code(), Some(5), "without --wait: {:?}", text(&refused));
    assert!(text(&refused).1.contains("in progress"), "{:?}", text(&refused));
    assert!(queued.status.success(), "--wait: {:?}", text(&queued));
    let series = job.series();
    assert!(text(&first).0.starts_with(&format!("Snapshot Ref.:   0 {series}\n")));
    assert!(
        text(&queued).0.starts_with(&format!("Snapshot Ref.:   1 {series}\n")),
        "the queued checkpoint is not the next one: {:?}",
        text(&queued)
    );
}

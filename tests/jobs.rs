//! Parallel jobs: `opal-run -np N` as the launcher of N ranks (environment, signals,
//! failures), the global checkpoint through the launcher and the job restart, with the
//! ring program of c-tests/ring.c.

mod common;
use common::*;
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

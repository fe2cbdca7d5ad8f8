//! Batch jobs that outlive their time limit, on a real Slurm: a private cluster on
//! localhost (munged, slurmctld and slurmd of Debian's slurm-wlm 22.05, started here
//! with their own configuration, key, state directories and ports, and stopped by PID
//! at the end) runs the job scripts of examples/slurm/ on the example programs.
//!
//! Four jobs run at once, each for a computation whose result the test knows:
//! - self and criu, each warned twice by `scancel --signal=USR1 --batch` (what
//!   `--signal=B:USR1@N` does, without waiting for a time limit), so each finishes in
//!   its third run after two automatic requeues;
//! - self and criu with a real one-minute time limit and `--signal=B:USR1@10`, whose
//!   work (120 s) needs several runs.
//!
//! Every job must end COMPLETED with the exact result; the test prints the requeues,
//! the work lost per requeue and the durations (`--nocapture` shows them). It takes
//! about 2.5 minutes (the time-limit jobs); `OPALCRS_SLURM_SHORT=1` leaves those out
//! (about 35 s). It needs root (Slurm's daemons and CRIU); it installs Slurm with
//! scripts/install-slurm.sh, and says why on stderr and passes when it cannot. The
//! criu jobs need CRIU >= 4 and are left out without it.
//!
//! The other tests run `opal-run` alone, as the job scripts do: fresh start,
//! checkpoint on USR1 with exit status 85, restart, for self and criu; series names
//! from the Slurm job; exit codes.

mod common;
use common::*;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Steps of the jobs warned by scancel, and after how many steps of a run they are warned.
const SHORT_STEPS: u64 = 300;
const SHORT_WARN_AFTER: usize = 100;
const SHORT_WARNINGS: usize = 2;
/// Steps of the jobs with a real time limit (50 ms each: 120 s for a 60 s limit).
const LONG_STEPS: u64 = 2400;
const STEP_MS: u64 = 50;
/// The whole test, cluster included, must end within this.
const DEADLINE: Duration = Duration::from_secs(270);
/// A run may lose at most this many steps (1 s of work) to its checkpoint.
const MAX_LOST_STEPS: u64 = 20;

/// The example programs' computation.
fn expected_value(steps: u64) -> u64 {
    (1..=steps).fold(0u64, |value, step| {
        value
            .wrapping_mul(6364136223846793005)
            .wrapping_add(step.wrapping_mul(1442695040888963407))
            .wrapping_add(1)
    })
}

fn slurm_missing() -> Option<String> {
    if !is_root() {
        return Some("needs root to run Slurm's daemons".into());
    }
    let script = repo().join("scripts/install-slurm.sh");
    match Command::new("bash").arg(&script).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "scripts/install-slurm.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run scripts/install-slurm.sh: {e}")),
    }
}

fn criu_missing() -> Option<String> {
    match opalcrs::components::criu::binary::find(None) {
        Ok(found) if found.version.0 >= 4 => None,
        Ok(found) => Some(format!("{} is CRIU {:?}", found.path.display(), found.version)),
        Err(e) => Some(e.to_string()),
    }
}

fn opal_run() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opal-run"))
}

/// Two different TCP ports on 127.0.0.1 that nothing listens on right now.
fn free_ports() -> (u16, u16) {
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    (first.local_addr().unwrap().port(), second.local_addr().unwrap().port())
}

fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    assert_eq!(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) }, 0);
    let name =
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())])
            .into_owned();
    name.split('.').next().unwrap().to_string()
}

/// A private Slurm cluster of one node; its daemons are our children, ended by PID.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn start(dir: &Path) -> Result<Cluster, String> {
        for sub in ["munge", "state", "spool", "log"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let key = dir.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
        fs::write(&key, &bytes).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(dir.join("munge"), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("munge/munge.socket");
        let conf = dir.join("slurm.conf");
        let mut cluster =
            Cluster { dir: dir.to_path_buf(), conf: conf.clone(), daemons: Vec::new() };

        let d = |name: &str| dir.join(name).display().to_string();
        let munged = Command::new("munged")
            .args(["--foreground", "--force"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", d("munge/munged.pid")))
            .arg(format!("--log-file={}", d("log/munged.log")))
            .arg(format!("--seed-file={}", d("munge/munged.seed")))
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("log/munged.out")).unwrap())
            .stderr(fs::File::create(dir.join("log/munged.err")).unwrap())
            .spawn()
            .map_err(|e| format!("starting munged: {e}"))?;
        cluster.daemons.push(("munged", munged));
        if !wait_until(Duration::from_secs(10), || socket.exists()) {
            return Err(format!("munged did not create its socket:\n{}", cluster.logs()));
        }

        let host = short_hostname();
        let (ctld_port, slurmd_port) = free_ports();
        // Slurm's floor for cred_expire is 5 s (less is refused and becomes 120 s); a
        // requeued job waits for it before it starts again.
        let text = format!(
            "ClusterName=opalcrstest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket},cred_expire=5\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={slurmd_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={slurmd_log}\n\
             SlurmctldDebug=info\n\
             SlurmdDebug=info\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             SchedulerType=sched/builtin\n\
             SchedulerParameters=sched_interval=1\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             SlurmdParameters=config_overrides\n\
             MailProg=/bin/true\n\
             MinJobAge=600\n\
             KillWait=5\n\
             InactiveLimit=0\n\
             Waittime=0\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            socket = socket.display(),
            state = d("state"),
            spool = d("spool"),
            ctld_pid = d("slurmctld.pid"),
            slurmd_pid = d("slurmd.pid"),
            ctld_log = d("log/slurmctld.log"),
            slurmd_log = d("log/slurmd.log"),
        );
        fs::write(&conf, text).unwrap();

        for (name, args) in [("slurmctld", &["-D"][..]), ("slurmd", &["-D"][..])] {
            let child = Command::new(name)
                .args(args)
                .arg("-f")
                .arg(&conf)
                // Not in their environment: it marks the processes of the jobs alone.
                .env_remove("SLURM_CONF")
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.join(format!("log/{name}.out"))).unwrap())
                .stderr(fs::File::create(dir.join(format!("log/{name}.err"))).unwrap())
                .spawn()
                .map_err(|e| format!("starting {name}: {e}"))?;
            cluster.daemons.push((name, child));
        }
        let idle = wait_until(Duration::from_secs(30), || {
            cluster.slurm("sinfo", &["-h", "-o", "%T"]).is_ok_and(|out| out.trim() == "idle")
        });
        if !idle {
            return Err(format!("the node did not become idle:\n{}", cluster.logs()));
        }
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        command
    }

    /// Runs a Slurm command; its stdout, or why it failed.
    fn slurm(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out =
            self.command(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `scontrol show job -o ID` as key=value pairs.
    fn job(&self, id: &str) -> Option<Vec<(String, String)>> {
        let out = self.slurm("scontrol", &["show", "job", "-o", id]).ok()?;
        Some(
            out.split_whitespace()
                .filter_map(|word| word.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The ends of the daemons' logs, for a failure message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "munged.err",
            "munged.log",
            "slurmctld.err",
            "slurmctld.log",
            "slurmd.err",
            "slurmd.log",
        ] {
            let log = fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("pmix")).collect();
            let tail = &tail[tail.len().saturating_sub(15)..];
            text.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
        }
        text
    }

    /// Processes of this cluster's jobs that are still there: every process whose
    /// environment names our configuration (the job steps and the programs).
    fn job_processes(&self) -> Vec<i32> {
        let marker = format!("SLURM_CONF={}", self.conf.display());
        let own = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != own && !self.daemons.iter().any(|(_, c)| c.id() as i32 == pid))
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first, while the daemons can still end them; then the daemons, by PID.
        if let Ok(ids) = self.slurm("squeue", &["-h", "-o", "%i"]) {
            for id in ids.split_whitespace() {
                let _ = self.slurm("scancel", &[id]);
            }
            wait_until(Duration::from_secs(15), || {
                self.slurm("squeue", &["-h", "-o", "%i"]).map_or(true, |s| s.trim().is_empty())
            });
        }
        for pid in self.job_processes() {
            // SAFETY: kill of a leftover process of this cluster's jobs, by PID.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // slurmctld first: stopped after slurmd, it waits for it for 10 s.
        self.daemons.sort_by_key(|(name, _)| {
            ["slurmctld", "slurmd", "munged"].iter().position(|n| n == name)
        });
        for (_, child) in self.daemons.iter_mut() {
            // SAFETY: SIGTERM to a daemon this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stop(child);
        }
    }
}

/// One run of a job, as its output shows it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Run {
    /// Steps printed in this run, first and last.
    first: Option<u64>,
    last: Option<u64>,
    /// The run ended with a checkpoint (`=== checkpointed`).
    checkpointed: bool,
    /// What opal-run said it did.
    started: Option<String>,
    /// When the job script began and ended this run (seconds since the epoch).
    began_at: Option<f64>,
    ended_at: Option<f64>,
}

/// The time at the end of `=== … at <seconds>[: …]`.
fn time_of(line: &str) -> Option<f64> {
    let (_, rest) = line.rsplit_once(" at ")?;
    rest.split(':').next()?.trim().parse().ok()
}

/// The runs of a job, from its output: each begins with `=== job <id> run <n>`.
fn runs(output: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for line in output.lines() {
        if line.starts_with("=== job ") {
            runs.push(Run { began_at: time_of(line), ..Run::default() });
            continue;
        }
        let Some(run) = runs.last_mut() else { continue };
        if let Some(step) =
            line.strip_prefix("step ").and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        {
            run.first.get_or_insert(step);
            run.last = Some(step);
        } else if line.starts_with("=== ") {
            run.checkpointed = line.starts_with("=== checkpointed");
            run.ended_at = time_of(line);
        } else if line.starts_with("opal-run: ") && run.started.is_none() {
            run.started = Some(line.to_string());
        }
    }
    runs
}

/// Steps done in each run after its checkpoint and done again by the next run.
fn lost_per_requeue(runs: &[Run]) -> Vec<u64> {
    runs.windows(2)
        .map(|pair| {
            let resumed_after = pair[1].first.map_or(0, |first| first - 1);
            pair[0].last.unwrap_or(0).saturating_sub(resumed_after)
        })
        .collect()
}

/// Seconds from the end of each run (its checkpoint) to the start of the next.
fn requeue_gaps(runs: &[Run]) -> Vec<f64> {
    runs.windows(2).filter_map(|pair| Some(pair[1].began_at? - pair[0].ended_at?)).collect()
}

/// Seconds each run lasted.
fn run_lengths(runs: &[Run]) -> Vec<f64> {
    runs.iter().filter_map(|run| Some(run.ended_at? - run.began_at?)).collect()
}

fn seconds(list: &[f64]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{s:.1}")).collect();
    format!("[{}] s", items.join(", "))
}

struct Job {
    label: &'static str,
    component: &'static str,
    steps: u64,
    /// Warned by scancel (after SHORT_WARN_AFTER steps of each run) rather than by Slurm.
    warned_by_test: bool,
    id: String,
    output: PathBuf,
    result: PathBuf,
    warnings_sent: usize,
    submitted: Instant,
    finished: Option<(Instant, Vec<(String, String)>)>,
}

impl Job {
    fn field<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.finished.as_ref()?.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[test]
fn batch_jobs_finish_correctly_across_requeues() {
    let started = Instant::now();
    if let Some(why) = slurm_missing() {
        eprintln!("skipped: Slurm test: {why}");
        return;
    }
    let criu = criu_missing();
    if let Some(why) = &criu {
        eprintln!("Slurm test: the criu jobs are left out: needs CRIU >= 4 ({why})");
    }
    let sb = Sandbox::new("slurm");
    // The job scripts and programs, as a user would have them.
    let bin = sb.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let sum_self = cc("../examples/slurm/sum_self.c", "sum_self", &["-O2", "-pthread"]);
    let sum = bin.join("sum");
    let status = Command::new("cc")
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&sum)
        .arg(repo().join("examples/slurm/sum.c"))
        .status()
        .unwrap();
    assert!(status.success(), "cc sum.c failed");
    let library = lib_dir().join("libopalcrs.so");

    let cluster = match Cluster::start(&sb.path("slurm")) {
        Ok(c) => c,
        Err(e) => panic!("cannot start the private Slurm cluster: {e}"),
    };
    let cluster_ready = started.elapsed();

    let mut jobs = Vec::new();
    let short = std::env::var_os("OPALCRS_SLURM_SHORT").is_some();
    let plans: [(&str, &str, u64, bool); 4] = [
        ("self, warned by scancel", "self", SHORT_STEPS, true),
        ("criu, warned by scancel", "criu", SHORT_STEPS, true),
        ("self, 1-minute limit", "self", LONG_STEPS, false),
        ("criu, 1-minute limit", "criu", LONG_STEPS, false),
    ];
    for (label, component, steps, warned_by_test) in plans {
        if short && !warned_by_test {
            continue;
        }
        if component == "criu" && criu.is_some() {
            continue;
        }
        let tag = format!("{component}-{}", if warned_by_test { "scancel" } else { "timelimit" });
        let result = sb.path(&format!("{tag}.result"));
        let output = sb.path(&format!("{tag}.out"));
        let (script, program) = match component {
            "self" => ("self.sbatch", sum_self.clone()),
            _ => ("criu.sbatch", sum.clone()),
        };
        let mut sbatch = sb.command("sbatch");
        sbatch
            .env("SLURM_CONF", &cluster.conf)
            .env("OPAL_RUN", opal_run())
            .env("OPALCRS_LIB", &library)
            .env("CKPT_DIR", sb.path("checkpoints"))
            .arg("--parsable")
            .arg(format!("--job-name={tag}"))
            .arg(format!("--output={}", output.display()));
        if !warned_by_test {
            sbatch.args(["--time=1", "--signal=B:USR1@10"]);
        }
        let out = sbatch
            .arg(repo().join("examples/slurm").join(script))
            .arg(&program)
            .arg(steps.to_string())
            .arg(STEP_MS.to_string())
            .arg(&result)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "sbatch failed: {stdout}{stderr}\n{}", cluster.logs());
        let id = stdout.trim().split(';').next().unwrap().to_string();
        jobs.push(Job {
            label,
            component,
            steps,
            warned_by_test,
            id,
            output,
            result,
            warnings_sent: 0,
            submitted: Instant::now(),
            finished: None,
        });
    }

    // Warn the scancel jobs, two runs each, once a run has done a third of the work;
    // wait for every job to end.
    while jobs.iter().any(|j| j.finished.is_none()) && started.elapsed() < DEADLINE {
        for job in jobs.iter_mut().filter(|j| j.finished.is_none()) {
            let info = cluster.job(&job.id).unwrap_or_default();
            let state = info.iter().find(|(k, _)| k == "JobState").map_or("", |(_, v)| v.as_str());
            if matches!(
                state,
                "COMPLETED"
                    | "FAILED"
                    | "CANCELLED"
                    | "TIMEOUT"
                    | "NODE_FAIL"
                    | "OUT_OF_MEMORY"
                    | "BOOT_FAIL"
                    | "DEADLINE"
            ) {
                job.finished = Some((Instant::now(), info));
                continue;
            }
            if job.warned_by_test && state == "RUNNING" && job.warnings_sent < SHORT_WARNINGS {
                let runs = runs(&fs::read_to_string(&job.output).unwrap_or_default());
                let current = runs.len().saturating_sub(1);
                let done =
                    match (runs.last().and_then(|r| r.first), runs.last().and_then(|r| r.last)) {
                        (Some(first), Some(last)) => (last - first + 1) as usize,
                        _ => 0,
                    };
                if current == job.warnings_sent && done >= SHORT_WARN_AFTER {
                    cluster.slurm("scancel", &["--signal=USR1", "--batch", &job.id]).unwrap();
                    job.warnings_sent += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Check every job and gather the figures.
    let mut failures = Vec::new();
    let mut report =
        format!("Slurm test: cluster ready after {:.1} s\n", cluster_ready.as_secs_f64());
    for job in &jobs {
        let output = fs::read_to_string(&job.output).unwrap_or_default();
        let runs = runs(&output);
        let lost = lost_per_requeue(&runs);
        let requeues = runs.len().saturating_sub(1);
        let expected = format!("steps {} value {}\n", job.steps, expected_value(job.steps));
        let result = fs::read_to_string(&job.result).unwrap_or_default();
        let duration =
            job.finished.as_ref().map(|(at, _)| at.duration_since(job.submitted).as_secs_f64());
        report.push_str(&format!(
            "  {} (job {}): {}, {} steps ({:.0} s of work) in {}\n    \
             {requeues} requeues (Slurm: Restarts={}); work lost per requeue {lost:?} steps of {STEP_MS} ms; \
             checkpoint to next start {}; runs {}\n",
            job.label,
            job.id,
            job.field("JobState").unwrap_or("not finished"),
            job.steps,
            (job.steps * STEP_MS) as f64 / 1000.0,
            duration.map_or("-".to_string(), |d| format!("{d:.1} s")),
            job.field("Restarts").unwrap_or("?"),
            seconds(&requeue_gaps(&runs)),
            seconds(&run_lengths(&runs)),
        ));
        let mut problems = Vec::new();
        if job.finished.is_none() {
            problems.push(format!("did not finish within {DEADLINE:?}"));
        } else if (job.field("JobState"), job.field("ExitCode")) != (Some("COMPLETED"), Some("0:0"))
        {
            problems.push(format!(
                "ended {:?} with exit code {:?}",
                job.field("JobState"),
                job.field("ExitCode")
            ));
        }
        if result != expected {
            problems.push(format!("result {result:?}, expected {expected:?}"));
        }
        if job.warned_by_test && requeues != SHORT_WARNINGS {
            problems.push(format!("{requeues} requeues, expected {SHORT_WARNINGS}"));
        }
        if !job.warned_by_test && requeues < 1 {
            problems.push("never requeued: the work fits in the limit?".to_string());
        }
        if job.field("Restarts").is_some_and(|r| r != requeues.to_string()) {
            problems.push(format!(
                "Slurm counts {:?} restarts, the output {requeues} runs after the first",
                job.field("Restarts")
            ));
        }
        for (i, run) in runs.iter().enumerate() {
            let last_run = i + 1 == runs.len();
            if run.checkpointed == last_run {
                problems.push(format!(
                    "run {i}: checkpointed={} (every run but the last must end with a checkpoint)",
                    run.checkpointed
                ));
            }
            let said = run.started.as_deref().unwrap_or("");
            let wanted = if i == 0 {
                "opal-run: no snapshot in series".to_string()
            } else {
                format!("opal-run: restarting from snapshot {} of series", i - 1)
            };
            if !said.starts_with(&wanted)
                || (i > 0 && !said.ends_with(&format!("(component {})", job.component)))
            {
                problems.push(format!("run {i}: opal-run said {said:?}, expected {wanted:?}…"));
            }
        }
        if let Some(too_many) = lost.iter().find(|&&l| l > MAX_LOST_STEPS) {
            problems.push(format!("a requeue lost {too_many} steps (more than {MAX_LOST_STEPS})"));
        }
        if !problems.is_empty() {
            let lines: Vec<&str> = output.lines().filter(|l| !l.starts_with("step ")).collect();
            failures.push(format!(
                "{} (job {}): {}\n  output without step lines:\n    {}",
                job.label,
                job.id,
                problems.join("; "),
                lines.join("\n    ")
            ));
        }
    }
    report.push_str(&format!("  total {:.1} s", started.elapsed().as_secs_f64()));
    eprintln!("{report}");
    if !failures.is_empty() {
        panic!("{}\n{report}\n{}", failures.join("\n"), cluster.logs());
    }
    drop(cluster);
}

/// `opal-run` outside Slurm, as a job script uses it: a fresh start, a checkpoint on
/// USR1 that ends the program with status 85, a restart, again, then the end. For
/// criu the second and third runs are restored children of opal-run, which passes the
/// signal on and relays the status.
fn start_checkpoint_restart(sb: &Sandbox, component: &str, program: &[&std::ffi::OsStr]) {
    let steps = 200u64;
    let result = sb.path("result");
    let run = || {
        let mut command = sb.command(opal_run());
        command
            .args(["-n", "series", "-w"])
            .arg(sb.path("ckpt"))
            .args(["-mca", "opal_cr_signal_exit", "1", "--"])
            .args(program)
            .args([&steps.to_string(), "10"])
            .arg(&result);
        if component == "criu" {
            command.env("OMPI_MCA_crs", "criu");
        }
        sb.spawn(command, "runs")
    };
    for n in 0..3 {
        // One output file for all runs: a restored program writes where it wrote before.
        let before = sb.read("runs.out").len();
        let mut child = run();
        let log = |sb: &Sandbox| sb.read("runs.out")[before..].to_string();
        let said = if n == 0 {
            format!(
                "opal-run: no snapshot in series {}: starting",
                sb.path("ckpt/series").display()
            )
        } else {
            format!(
                "opal-run: restarting from snapshot {} of series {} (component {component})",
                n - 1,
                sb.path("ckpt/series").display()
            )
        };
        // Let it work, then warn it as Slurm would (the first two runs).
        let working = wait_until(Duration::from_secs(20), || {
            log(sb).lines().filter(|l| l.starts_with("step ")).count() >= 20
        });
        assert!(working, "run {n} does not work:\n{}", log(sb));
        assert!(log(sb).contains(&said), "run {n}: expected {said:?} in:\n{}", log(sb));
        if n < 2 {
            // SAFETY: a signal to the opal-run this test started (the program itself for
            // a fresh start and for self, which opal-run became).
            unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
        }
        let status = child.wait().unwrap();
        let expected = if n < 2 { 85 } else { 0 };
        assert_eq!(status.code(), Some(expected), "run {n}:\n{}", log(sb));
    }
    let expected = format!("steps {steps} value {}\n", expected_value(steps));
    assert_eq!(fs::read_to_string(&result).unwrap_or_default(), expected);
    let published: Vec<String> = fs::read_dir(sb.path("ckpt/series"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(published.len(), 2, "{published:?}");
}

#[test]
fn opal_run_starts_then_restarts_a_self_program() {
    let sb = Sandbox::new("opal-run-self");
    let program = cc("../examples/slurm/sum_self.c", "sum_self-opal-run", &["-O2", "-pthread"]);
    start_checkpoint_restart(&sb, "self", &[program.as_os_str()]);
}

#[test]
fn opal_run_starts_then_restores_a_criu_program_and_passes_signals_on() {
    if !is_root() || criu_missing().is_some() {
        eprintln!(
            "skipped: needs root and CRIU >= 4 ({})",
            criu_missing().unwrap_or_else(|| "not root".into())
        );
        return;
    }
    let sb = Sandbox::new("opal-run-criu");
    let sum = sb.path("sum");
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&sum)
        .arg(repo().join("examples/slurm/sum.c"))
        .status()
        .unwrap();
    assert!(status.success());
    let preload = format!("LD_PRELOAD={}", lib_dir().join("libopalcrs.so").display());
    start_checkpoint_restart(&sb, "criu", &["env".as_ref(), preload.as_ref(), sum.as_os_str()]);
}

#[test]
fn opal_run_names_the_series_after_the_slurm_job_and_reports_errors() {
    let sb = Sandbox::new("opal-run-errors");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = sb.command(opal_run());
        command
            .args(args)
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_ARRAY_JOB_ID")
            .env_remove("SLURM_ARRAY_TASK_ID");
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let show = "echo $OMPI_MCA_crs_base_snapshot_name $OMPI_MCA_crs_base_snapshot_dir $OMPI_MCA_x";
    let (code, stdout, stderr) =
        run(&["-w", "ckpt", "-mca", "x", "1", "sh", "-c", show], &[("SLURM_JOB_ID", "42")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("slurm_42.ckpt {} 1\n", sb.path("ckpt").display()));
    assert!(
        stderr.contains(&format!(
            "no snapshot in series {}: starting sh fresh",
            sb.path("ckpt/slurm_42.ckpt").display()
        )),
        "{stderr}"
    );
    let env = [("SLURM_JOB_ID", "43"), ("SLURM_ARRAY_JOB_ID", "40"), ("SLURM_ARRAY_TASK_ID", "3")];
    assert_eq!(run(&["sh", "-c", show], &env).1, "slurm_40_3.ckpt\n");
    assert_eq!(run(&["-n", "mine", "--", "sh", "-c", show], &env).1, "mine\n");
    assert_eq!(run(&["sh", "-c", "exit 7"], &env).0, Some(7));

    let (code, _, stderr) = run(&["true"], &[]);
    assert_eq!(code, Some(125));
    assert!(stderr.contains("no series: give -n SERIES"), "{stderr}");
    assert_eq!(run(&["-n", "s"], &[]).0, Some(125));
    assert_eq!(run(&["-n", "a/b", "true"], &[]).0, Some(125));
    assert_eq!(run(&["--bogus", "true"], &[]).0, Some(125));
    let (code, stdout, _) = run(&["-h"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("Usage: opal-run"), "{stdout}");
    let (code, _, stderr) = run(&["-n", "s", "/nonexistent/program"], &[]);
    assert_eq!(code, Some(127), "{stderr}");
    fs::write(sb.path("not-executable"), "").unwrap();
    assert_eq!(run(&["-n", "s", "./not-executable"], &[]).0, Some(126));
    // A series whose snapshots are all unusable: said, and a fresh start.
    fs::create_dir_all(sb.path("broken.ckpt/0")).unwrap();
    let (code, stdout, stderr) = run(&["-n", "broken.ckpt", "echo", "fresh"], &[]);
    assert_eq!((code, stdout.as_str()), (Some(0), "fresh\n"), "{stderr}");
    assert!(stderr.contains("has no good snapshot (1 skipped: 0: incomplete"), "{stderr}");
    assert!(stderr.contains("no good snapshot in series"), "{stderr}");
    // A series that is not a directory is an error, not a fresh start.
    fs::write(sb.path("file.ckpt"), "").unwrap();
    let (code, _, stderr) = run(&["-n", "file.ckpt", "true"], &[]);
    assert_eq!(code, Some(125), "{stderr}");
}

#[test]
fn figures_from_a_job_output() {
    let output = "=== job 7 run 0 on n at 100.000\nopal-run: no snapshot in series /c/slurm_7.ckpt: starting x fresh\n\
                  step 1 pid 5\nstep 2 pid 5\ncheckpoint after step 1\nstep 3 pid 5\n=== checkpointed at 130.500: requeueing\n\
                  === job 7 run 1 on n at 137.000\nopal-run: restarting from snapshot 0 of series /c/slurm_7.ckpt (component self)\n\
                  restarted after step 2\nstep 3 pid 6\nstep 4 pid 6\n=== finished at 140.000\n";
    let runs = runs(output);
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].first, runs[0].last, runs[0].checkpointed), (Some(1), Some(3), true));
    assert_eq!((runs[1].first, runs[1].last, runs[1].checkpointed), (Some(3), Some(4), false));
    assert!(runs[1].started.as_deref().unwrap().contains("component self"));
    assert_eq!(lost_per_requeue(&runs), [1]);
    assert_eq!(requeue_gaps(&runs), [6.5]);
    assert_eq!(run_lengths(&runs), [30.5, 3.0]);
    assert_eq!(seconds(&[6.5, 3.04]), "[6.5, 3.0] s");
    assert_eq!(expected_value(0), 0);
    assert_eq!(expected_value(2400), 12371230527612661168);
}

/// `srun --export=ALL,LD_PRELOAD=…`: the job step's program is preloaded (not srun), is
/// checkpointed by its PID on the node (self and criu), killed, and restarts to the
/// end of an uninterrupted run. The same with LD_PRELOAD in srun's own environment
/// (srun is preloaded then, and passes it on).
#[test]
fn srun_with_the_preload_on_its_command_line_preloads_the_step_program() {
    if let Some(why) = slurm_missing() {
        eprintln!("skipped: Slurm test: {why}");
        return;
    }
    let sb = Sandbox::new("slurm-srun");
    let cluster = Cluster::start(&sb.path("slurm"))
        .unwrap_or_else(|e| panic!("cannot start the private Slurm cluster: {e}"));
    let self_app = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let mut cases = vec![("self", self_app.clone(), true), ("self", self_app, false)];
    if criu_missing().is_none() {
        let plain = cc_without_library("preload_app.c", "preload-app-plain", &["-DNO_CALLBACKS"]);
        cases.push(("criu", plain, true));
    }
    let limit = 60;
    let library = lib_dir().join("libopalcrs.so");
    for (component, exe, on_command_line) in cases {
        let tag = format!("{component}-{}", if on_command_line { "export" } else { "env" });
        let (log, state) = (sb.path(&format!("{tag}.log")), sb.path(&format!("{tag}.state")));
        let mut srun = sb.command("srun");
        srun.env("SLURM_CONF", &cluster.conf);
        if on_command_line {
            srun.arg(format!("--export=ALL,LD_PRELOAD={}", library.display()));
        } else {
            srun.env("LD_PRELOAD", &library);
        }
        srun.arg(&exe).args([&log, &state]).args(["--limit", &limit.to_string()]);
        let mut srun = sb.spawn(srun, &format!("srun-{tag}"));
        let logged_pid = || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("main pid="))
                .and_then(|p| p.parse::<u32>().ok())
        };
        assert!(
            wait_until(Duration::from_secs(30), || logged_pid().is_some()),
            "{tag}: the step did not start: {}\n{}",
            sb.read(&format!("srun-{tag}.out")),
            cluster.logs()
        );
        let pid = logged_pid().unwrap();
        sb.adopt(pid);
        let maps = fs::read_to_string(format!("/proc/{}/maps", srun.id())).unwrap_or_default();
        assert_eq!(maps.contains("libopalcrs"), !on_command_line, "{tag}: srun's own preload");
        assert!(wait_until(Duration::from_secs(10), || {
            last_count(&fs::read_to_string(&log).unwrap_or_default()).unwrap_or(0) >= 8
        }));
        let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
        let meta = fs::read_to_string(snapshot.join("snapshot_meta.data")).unwrap();
        assert!(meta.contains(&format!("# OPAL CRS Component: {component}")), "{meta}");
        kill(pid);
        assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
        assert!(wait_exit(&mut srun, Duration::from_secs(20)).is_some(), "srun did not end");
        let done = fs::read_to_string(&log).unwrap_or_default();
        assert!(!done.contains("done"), "{tag}: ended before it was killed");
        let (status, _, stderr) = run_restart(&sb, &[snapshot.to_str().unwrap()]);
        assert!(status.success(), "{tag}: restart {status:?}: {stderr}");
        let expected = format!("done count={limit} sum={}", limit * (limit + 1) / 2);
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        assert!(log_text.contains(&expected), "{tag}: {log_text}");
    }
}

/// A cgroup directory of one v1 hierarchy made by a test, removed when dropped (after
/// the processes in it, the test's own, are ended).
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    /// `/sys/fs/cgroup/<controller>/<name>`; None when the hierarchy is not there.
    fn create(controller: &str, name: &str) -> Option<TestCgroup> {
        let hierarchy = Path::new("/sys/fs/cgroup").join(controller);
        if !hierarchy.join("cgroup.procs").exists() {
            return None;
        }
        let dir = hierarchy.join(name);
        fs::create_dir_all(&dir).ok()?;
        Some(TestCgroup { dir })
    }

    fn sub(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The cgroup of `pid` in this hierarchy, relative to this test's directory.
    fn of(&self, pid: u32) -> Option<String> {
        let hierarchy = self.dir.parent()?.file_name()?.to_str()?.to_string();
        let name = self.dir.file_name()?.to_str()?.to_string();
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == hierarchy).then(|| path.to_string())
        })?;
        Some(path.strip_prefix(&format!("/{name}")).unwrap_or(&path).to_string())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Deepest first: a cgroup directory is removed by rmdir once it is empty.
        let mut dirs = vec![self.dir.clone()];
        let mut next = 0;
        while next < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[next]) {
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            next += 1;
        }
        for dir in dirs.iter().rev() {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                kill(pid);
            }
            wait_until(Duration::from_secs(5), || fs::remove_dir(dir).is_ok() || !dir.exists());
        }
    }
}

/// What a requeued job's restore must do with cgroups (Slurm's proctrack/cgroup and
/// task/cgroup): the restored tree lives in the cgroups of the process that restores
/// it (the new job's step), never in those it was dumped from. A tree whose child was
/// in another cgroup than its root (so CRIU records the cgroups) is dumped, that cgroup
/// is removed with its job, and the tree is restored by an opal-restart placed in a
/// cgroup of its own: parent and child must come back there.
#[test]
fn a_restored_tree_lives_in_the_cgroups_of_the_process_that_restores_it() {
    if !is_root() || criu_missing().is_some() {
        eprintln!("skipped: needs root and CRIU >= 4 ({:?})", criu_missing());
        return;
    }
    let sb = Sandbox::new("slurm-cgroups");
    let Some(cgroup) =
        TestCgroup::create("freezer", &format!("opalcrs-test-{}", std::process::id()))
    else {
        eprintln!("skipped: no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer");
        return;
    };
    let (old_job, new_job) = (cgroup.sub("old_job"), cgroup.sub("new_job"));
    let mut command = sb.command(cc("soak_tree.c", "soak_tree", &[]));
    command.arg(sb.path("parent")).arg(sb.path("child")).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let child_pid =
        || sb.read("child").lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    assert!(
        wait_until(Duration::from_secs(20), || child_pid().is_some()),
        "soak_tree did not start: {}",
        sb.read("app.out")
    );
    let child: u32 = child_pid().unwrap();
    sb.adopt(child);
    fs::write(old_job.join("cgroup.procs"), child.to_string()).unwrap();
    assert_eq!(cgroup.of(child).as_deref(), Some("/old_job"));
    let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    kill(child);
    kill_and_reap(&mut app);
    assert!(wait_until(Duration::from_secs(10), || !Path::new(&format!("/proc/{child}")).exists()));
    fs::remove_dir(&old_job).unwrap();

    // opal-restart --fork, moved into the new job's cgroup before it runs.
    let procs = std::ffi::CString::new(new_job.join("cgroup.procs").as_os_str().as_encoded_bytes())
        .unwrap();
    let mut restart = sb.command(restart_tool());
    restart.args(["--fork", snapshot.to_str().unwrap()]);
    // SAFETY: open/write/close of a prepared path, async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut restart, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let written = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            if fd >= 0 {
                libc::close(fd);
            }
            if written {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = restart.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "opal-restart: {stdout}{stderr}");
    let restored: u32 = stdout.trim().parse().unwrap();
    sb.adopt(restored);
    assert_eq!(restored, pid);
    assert!(wait_until(Duration::from_secs(10), || children(restored).contains(&child)));
    sb.adopt(child);
    let places = (cgroup.of(restored), cgroup.of(child));
    kill(child);
    kill(restored);
    assert_eq!(
        places,
        (Some("/new_job".to_string()), Some("/new_job".to_string())),
        "the restored parent and child (the child was in /old_job at the dump; {}) ",
        if old_job.exists() { "CRIU made /old_job again" } else { "/old_job is gone" }
    );
}

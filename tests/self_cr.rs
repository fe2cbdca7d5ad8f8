//! The self component end to end: real C programs checkpointed by `opal-checkpoint`,
//! killed and restarted by `opal-restart`, and every error the tools report.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn selfapp() -> std::path::PathBuf {
    cc("selfapp.c", "selfapp", &[])
}

const LONG: Duration = Duration::from_secs(10);

#[test]
fn checkpoint_kill_restart_elsewhere_continues_the_counter_and_the_series() {
    let sb = Sandbox::new("self-e2e");
    let mut app = start(&sb, &selfapp(), &[], &[]);
    let pid = app.id().to_string();
    let out = sb.checkpoint(&[&pid]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let series = format!("opal_snapshot_{pid}.ckpt");
    assert!(stdout.starts_with(&format!("Snapshot Ref.:   0 {series}\n")), "{stdout}");
    assert!(stderr.contains(&format!("Local Snapshot Reference = {series}")), "{stderr}");
    let snapshot = snapshot_path(&out);
    assert_eq!(snapshot, sb.path(&series).join("0"));
    let meta = std::fs::read_to_string(snapshot.join("snapshot_meta.data")).unwrap();
    assert!(
        meta.starts_with(&format!("# PID: {pid}\n# OPAL CRS Component: self\n# CONTEXT: ")),
        "{meta}"
    );
    assert!(meta.contains("# OPALCRS Self Prefix: opal_crs_self_user"), "{meta}");
    assert!(snapshot.join("opalcrs_manifest.json").exists());
    let saved: i64 =
        std::fs::read_to_string(snapshot.join("state")).unwrap().trim().parse().unwrap();
    assert!(sb.read("log").contains("continue default"));

    stop(&mut app);
    let before = sb.read("log").len();
    // Restart from another directory: the recorded working directory is used.
    let other = sb.path("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let restarted = sb.spawn_restart(&other, &["--fork", &series]);
    sb.adopt(restarted);
    assert!(wait_until(LONG, || last_count(&sb.read("log")[before..]).unwrap_or(0) > saved + 2));
    let after = &sb.read("log")[before..];
    let expected =
        format!("restart default in_init=1 value={saved} env_dir={}", snapshot.display());
    assert!(after.contains(&expected), "{after}");
    assert!(after.contains("do_restart_env=(null)"), "the one-shot variable leaked: {after}");
    let first_count = after.lines().find_map(|l| l.strip_prefix("count ")).unwrap();
    assert_eq!(first_count, (saved + 1).to_string());

    // The restarted process continues the same series.
    let again = sb.checkpoint(&[&restarted.to_string()]);
    assert!(again.status.success(), "{:?}", text(&again));
    assert_eq!(snapshot_path(&again), sb.path(&series).join("1"));
    kill(restarted);
}

trait RestartExt {
    fn spawn_restart(&self, cwd: &std::path::Path, args: &[&str]) -> u32;
}

impl RestartExt for Sandbox {
    /// `opal-restart --fork …` run from `cwd`; returns the restarted PID.
    fn spawn_restart(&self, cwd: &std::path::Path, args: &[&str]) -> u32 {
        // The restarted child inherits stdout, so read it from a file, not a pipe.
        let pid_file = self.path("restart.pid");
        let status = self
            .command(restart_tool())
            .current_dir(cwd)
            .args(args)
            .stdout(std::fs::File::create(&pid_file).unwrap())
            .status()
            .unwrap();
        let stdout = std::fs::read_to_string(&pid_file).unwrap();
        assert!(status.success(), "opal-restart failed: {stdout}");
        stdout.trim().parse().unwrap_or_else(|_| panic!("--fork printed {stdout:?}"))
    }
}

#[test]
fn custom_prefix_from_a_parameter_file() {
    let sb = Sandbox::new("self-prefix");
    let program = cc("selfapp.c", "selfapp-custom", &["-DSELFAPP_CUSTOM"]);
    std::fs::write(
        sb.path("params.conf"),
        "# test parameters\n// our callback names\ncrs_self_prefix = custom\n/* done */\n",
    )
    .unwrap();
    let params = sb.path("params.conf").display().to_string();
    let mut app = start(&sb, &program, &[], &[("OMPI_MCA_mca_base_param_files", &params)]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(sb.read("log").contains("checkpoint custom"));
    let meta = std::fs::read_to_string(snapshot_path(&out).join("snapshot_meta.data")).unwrap();
    assert!(meta.contains("# OPALCRS Self Prefix: custom"), "{meta}");
    stop(&mut app);
    // No flag needed at restart: the prefix is recorded.
    let before = sb.read("log").len();
    let pid = sb.spawn_restart(&sb.dir, &["--fork", snapshot_path(&out).to_str().unwrap()]);
    sb.adopt(pid);
    assert!(
        wait_until(LONG, || sb.read("log")[before..].contains("restart custom in_init=1")),
        "{}",
        sb.read("log")
    );
}

#[test]
fn registered_callbacks_work_without_exported_symbols() {
    let sb = Sandbox::new("self-register");
    let program = cc("selfapp.c", "selfapp-noexport", &["-DSELFAPP_NO_EXPORT"]);
    let mut app = start(&sb, &program, &["--register"], &[("OMPI_MCA_crs", "self")]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(sb.read("log").contains("checkpoint registered"));
    assert!(sb.read("log").contains("continue registered"));
    stop(&mut app);
    let before = sb.read("log").len();
    let pid = sb.spawn_restart(&sb.dir, &["--fork", snapshot_path(&out).to_str().unwrap()]);
    sb.adopt(pid);
    assert!(wait_until(LONG, || sb.read("log")[before..].contains("restart registered in_init=1")));
}

#[test]
fn registering_after_opal_init_selects_self_from_then_on() {
    let sb = Sandbox::new("self-register-late");
    let program = cc("selfapp.c", "selfapp-noexport", &["-DSELFAPP_NO_EXPORT"]);
    // Without callbacks at opal_init, none is selected (criu excluded here).
    let mut app = start(&sb, &program, &["--register-late"], &[("OMPI_MCA_crs", "self,none")]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(sb.read("log").contains("checkpoint registered"));
    stop(&mut app);
}

#[test]
fn without_the_thread_requests_wait_for_test_if_checkpoint_ready() {
    let sb = Sandbox::new("self-nothread");
    let mut app = start(&sb, &selfapp(), &["--poll"], &[("OMPI_MCA_opal_cr_use_thread", "0")]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(sb.read("log").contains("checkpoint default"));
    // The checkpoint ran on the program's own thread, between two counts.
    stop(&mut app);
}

#[test]
fn a_critical_section_defers_the_checkpoint() {
    let sb = Sandbox::new("self-critical");
    let mut app = start(&sb, &selfapp(), &["--critical", "4"], &[]);
    assert!(wait_until(LONG, || sb.read("log").contains("critical-enter")));
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let log = sb.read("log");
    let exit_at = log.find("critical-exit").expect("critical section ended");
    let ckpt_at = log.find("checkpoint default").expect("checkpoint ran");
    assert!(ckpt_at > exit_at, "checkpoint ran inside the critical section:\n{log}");
    stop(&mut app);
}

#[test]
fn term_ends_the_process_after_the_snapshot() {
    let sb = Sandbox::new("self-term");
    let mut app = start(&sb, &selfapp(), &[], &[]);
    let out = sb.checkpoint(&["--term", "-v", &app.id().to_string()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("] Terminated - "), "{stderr}");
    assert!(snapshot_path(&out).join("snapshot_meta.data").exists());
    let status = app.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn name_and_where_choose_the_series() {
    let sb = Sandbox::new("self-name");
    let mut app = start(&sb, &selfapp(), &[], &[]);
    let place = sb.path("snaps");
    let out = sb.checkpoint(&["-n", "job42", "-w", place.to_str().unwrap(), &app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(snapshot_path(&out), place.join("job42").join("0"));
    assert!(text(&out).0.starts_with("Snapshot Ref.:   0 job42\n"));
    let bad = sb.checkpoint(&["-n", "../escape", &app.id().to_string()]);
    assert_eq!(bad.status.code(), Some(1), "{:?}", text(&bad));
    stop(&mut app);
}

#[test]
fn the_signal_takes_a_checkpoint_through_the_notify_callback() {
    let sb = Sandbox::new("self-signal");
    let mut app = start(&sb, &selfapp(), &["--notify"], &[]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(app.id() as i32, libc::SIGUSR1) };
    let series = sb.path(&format!("opal_snapshot_{}.ckpt", app.id()));
    assert!(
        wait_until(LONG, || series.join("0/snapshot_meta.data").exists()),
        "{}",
        sb.read("log")
    );
    let log = sb.read("log");
    assert!(log.contains("notify 0"), "{log}");
    assert!(log.find("notify 0").unwrap() < log.find("checkpoint default").unwrap());
    assert!(alive(app.id()), "SIGUSR1 must not kill the program");
    stop(&mut app);
}

#[test]
fn opalcrs_checkpoint_from_the_program() {
    let sb = Sandbox::new("self-api");
    let mut app = start(&sb, &selfapp(), &["--api", "3"], &[]);
    assert!(wait_until(LONG, || sb.read("log").contains("api rc=")));
    assert!(sb.read("log").contains("api rc=0 state=4"), "{}", sb.read("log"));
    stop(&mut app);
}

#[test]
fn concurrent_requests_never_break_a_snapshot() {
    let sb = Sandbox::new("self-concurrent");
    let mut app = start(&sb, &selfapp(), &["--slow", "200"], &[]);
    let pid = app.id().to_string();
    // Ten tools at once, really concurrently.
    let children: Vec<_> = (0..10)
        .map(|_| {
            sb.command(checkpoint_tool())
                .arg(&pid)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let codes: Vec<i32> = outputs.iter().map(|o| o.status.code().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 0 || *c == 5), "{codes:?}");
    assert!(codes.contains(&0) && codes.contains(&5), "{codes:?}");
    for output in outputs.iter().filter(|o| o.status.code() == Some(5)) {
        assert!(text(output).1.contains("in progress"), "{:?}", text(output));
    }
    // Every published snapshot is complete; with --wait all ten queue and succeed.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            sb.command(checkpoint_tool())
                .args(["--wait", &pid])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in waiting {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    let series = sb.path(&format!("opal_snapshot_{pid}.ckpt"));
    let verdicts = verify_all(&series);
    assert!(!verdicts.is_empty() && verdicts.iter().all(|v| v.is_usable()), "{verdicts:?}");
    stop(&mut app);
}

fn verify_all(series: &std::path::Path) -> Vec<opalcrs::snapshot::Verdict> {
    let series = opalcrs::snapshot::Series::at(series);
    series
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|seq| opalcrs::snapshot::verify(&series.snapshot_dir(seq)))
        .collect()
}

#[test]
fn json_and_status() {
    let sb = Sandbox::new("self-json");
    let mut app = start(&sb, &selfapp(), &[], &[]);
    let pid = app.id().to_string();
    let out = sb.checkpoint(&["--json", &pid]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["pid"].as_i64().unwrap().to_string(), pid);
    assert_eq!(v["seq"], 0);
    assert_eq!(v["component"], "self");
    assert_eq!(v["state"], "continue");
    assert!(v["path"].as_str().unwrap().ends_with("/0"));
    assert!(v["elapsed_ms"].as_f64().unwrap() > 0.0);
    let status = sb.checkpoint(&["--status", &pid]);
    let (stdout, _) = text(&status);
    assert!(stdout.contains("Component: self") && stdout.contains("Last Seq: 0"), "{stdout}");
    let missing = sb.checkpoint(&["--json", "999999999"]);
    let v: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(v["error"]["code"], 2);
    stop(&mut app);
}

#[test]
fn errors_of_opal_checkpoint() {
    let sb = Sandbox::new("self-errors");
    // No such process.
    let out = sb.checkpoint(&["999999999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no such process"));
    // Usage.
    assert_eq!(sb.checkpoint(&[]).status.code(), Some(1));
    assert_eq!(sb.checkpoint(&["--bogus", "1"]).status.code(), Some(1));
    assert_eq!(sb.checkpoint(&["abc"]).status.code(), Some(1));
    // A process that does not use libopalcrs is told apart and never signalled.
    let mut sleep = sb.command("sleep");
    sleep.arg("30");
    let mut sleeper = sb.spawn(sleep, "sleep");
    let asked = std::time::Instant::now();
    let out = sb.checkpoint(&[&sleeper.id().to_string()]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("not a libopalcrs process"));
    assert!(asked.elapsed() < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(sleeper.id()));
    stop(&mut sleeper);
    // A checkpoint callback that gives no restart command: the component failed.
    let mut app = start(&sb, &selfapp(), &["--null-cmd"], &[]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert_eq!(out.status.code(), Some(6), "{:?}", text(&out));
    assert!(text(&out).1.contains("returned no restart command"));
    let series = sb.path(&format!("opal_snapshot_{}.ckpt", app.id()));
    assert!(verify_all(&series).is_empty(), "a failed checkpoint published a snapshot");
    stop(&mut app);
    // Timeout.
    let mut slow = start(&sb, &selfapp(), &["--slow", "3000"], &[]);
    let out = sb.checkpoint(&["--timeout", "0.3", &slow.id().to_string()]);
    assert_eq!(out.status.code(), Some(7), "{:?}", text(&out));
    stop(&mut slow);
}

#[test]
fn another_user_is_refused() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to act as a second user");
        return;
    }
    let sb = Sandbox::new("self-uid");
    let mut app = start(&sb, &selfapp(), &[], &[]);
    let out = sb
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sb.copy_program(&checkpoint_tool(), "opal-checkpoint"))
        .arg(app.id().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
    assert!(text(&out).1.contains("permission denied"));
    stop(&mut app);
}

#[test]
fn a_private_tmpdir_does_not_hide_the_process() {
    let sb = Sandbox::new("self-tmpdir");
    let private = sb.path("private-tmp");
    std::fs::create_dir_all(&private).unwrap();
    let mut app = start(
        &sb,
        &selfapp(),
        &[],
        &[("TMPDIR", private.to_str().unwrap()), ("XDG_RUNTIME_DIR", private.to_str().unwrap())],
    );
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    stop(&mut app);
}

#[test]
fn a_process_with_nothing_to_checkpoint_is_refused() {
    let sb = Sandbox::new("self-none");
    let program = cc("selfapp.c", "selfapp-noexport", &["-DSELFAPP_NO_EXPORT"]);
    let mut app = start(&sb, &program, &[], &[("OMPI_MCA_crs", "^criu")]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("not checkpointable"));
    stop(&mut app);
}

#[test]
fn errors_of_opal_restart() {
    let sb = Sandbox::new("restart-errors");
    let out = sb.restart(&["no_such_series"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out).1.contains("no such snapshot"), "{:?}", text(&out));
    assert_eq!(sb.restart(&[]).status.code(), Some(125));
    // A directory without metadata.
    std::fs::create_dir_all(sb.path("empty/0")).unwrap();
    let out = sb.restart(&[sb.path("empty/0").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{:?}", text(&out));
    // Old flat layouts: unknown component, missing command, command not found.
    let flat = |name: &str, body: &str| {
        let dir = sb.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("snapshot_meta.data"), body).unwrap();
        dir.to_str().unwrap().to_string()
    };
    let out = sb.restart(&[&flat("blcr", "# PID: 7\n# OPAL CRS Component: blcr\n# CONTEXT: x\n")]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out).1.contains("'blcr'"), "{:?}", text(&out));
    let out = sb.restart(&[&flat("nocmd", "# PID: 7\n# OPAL CRS Component: self\n")]);
    assert_eq!(out.status.code(), Some(127), "{:?}", text(&out));
    assert!(text(&out).1.contains("no restart command"));
    let out = sb.restart(&[&flat(
        "notfound",
        "# PID: 7\n# Component: self\n# CONTEXT: /no/such/program -x\n",
    )]);
    assert_eq!(out.status.code(), Some(127), "{:?}", text(&out));
    assert!(text(&out).1.contains("/no/such/program"));
    // 1.10 options address the same flat snapshot.
    let out =
        sb.restart(&["-l", sb.dir.to_str().unwrap(), "-r", "notfound", "-m", "snapshot_meta.data"]);
    assert_eq!(out.status.code(), Some(127), "{:?}", text(&out));
}

#[test]
fn opal_restart_replaces_itself_and_passes_the_exit_status() {
    let sb = Sandbox::new("restart-exec");
    let dir = sb.path("flat");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("snapshot_meta.data"),
        "# PID: 7\n# OPAL CRS Component: self\n# CONTEXT: sh -c 'exit 42'\n",
    )
    .unwrap();
    let out = sb.restart(&[dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(42), "{:?}", text(&out));
}

#[test]
fn a_request_never_taken_times_out_with_exit_7() {
    let sb = Sandbox::new("self-untaken");
    // No listener thread and no polling: nobody takes the request.
    let mut app = start(&sb, &selfapp(), &[], &[("OMPI_MCA_opal_cr_use_thread", "0")]);
    let out = sb.checkpoint(&["--timeout", "0.5", &app.id().to_string()]);
    assert_eq!(out.status.code(), Some(7), "{:?}", text(&out));
    assert!(text(&out).1.contains("timed out"));
    stop(&mut app);
}

#[test]
fn parameters_given_to_the_restart_win_over_the_recorded_ones() {
    let sb = Sandbox::new("self-restart-params");
    let mut app = start(&sb, &selfapp(), &[], &[("OMPI_MCA_crs_base_snapshot_keep", "5")]);
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    stop(&mut app);
    let snapshot = snapshot_path(&out);
    let pid = sb.spawn_restart(
        &sb.dir,
        &[
            "--fork",
            "-mca",
            "crs_base_snapshot_keep",
            "7",
            "-mca",
            "opal_cr_signal_exit",
            "1",
            snapshot.to_str().unwrap(),
        ],
    );
    sb.adopt(pid);
    // Read once the restarted program runs: until its exec is through, /proc shows
    // opal-restart's environment, or an empty one in the middle of the exec.
    let environ = || {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
            .into_owned()
    };
    let execed =
        || std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == selfapp());
    assert!(wait_until(LONG, || execed() && !environ().is_empty()), "{pid} never ran selfapp");
    let environ = environ();
    let vars: Vec<&str> = environ.split('\0').collect();
    assert!(vars.contains(&"OMPI_MCA_opal_cr_signal_exit=1"), "{vars:?}");
    // The last value of a name wins in a program's environment lookup: make sure it is 7.
    let keep: Vec<&&str> =
        vars.iter().filter(|v| v.starts_with("OMPI_MCA_crs_base_snapshot_keep=")).collect();
    assert_eq!(keep.last().map(|v| **v), Some("OMPI_MCA_crs_base_snapshot_keep=7"), "{keep:?}");
    assert!(!vars.iter().any(|v| v.starts_with("OMPI_MCA_opal_cr_is_tool")));
}

/// Names in a series directory that are temporaries (`.tmp-*`).
fn temporaries(series: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(series)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-"))
        .collect()
}

/// Waits until the program's counter passes the one it shows now.
fn still_counts(sb: &Sandbox) -> bool {
    let now = last_count(&sb.read("log"));
    wait_until(LONG, || last_count(&sb.read("log")) > now)
}

#[test]
fn a_checkpoint_callback_that_returns_an_error_fails_the_checkpoint() {
    let sb = Sandbox::new("self-callback-error");
    let mut app = start(&sb, &selfapp(), &["--error-at", "2"], &[]);
    let pid = app.id().to_string();
    let series = sb.path(&format!("opal_snapshot_{pid}.ckpt"));
    let (_, first) = checkpoint_ok(&sb, &[&pid]);
    let first_state = std::fs::read(first.join("state")).unwrap();

    // The callback sets a restart command and returns OPAL_ERROR.
    let out = sb.checkpoint(&[&pid]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "self: checkpoint callback opal_crs_self_user_checkpoint returned -1 (OPAL_ERROR)"
        ),
        "{stderr}"
    );
    assert!(!stdout.contains("Snapshot Ref."), "{stdout}");
    assert!(sb.read("log").contains("checkpoint call 2 returns OPAL_ERROR"));
    // Nothing published, the earlier snapshot untouched, no temporary left behind.
    assert_eq!(verify_all(&series), [opalcrs::snapshot::Verdict::Good]);
    assert_eq!(std::fs::read(first.join("state")).unwrap(), first_state);
    assert_eq!(temporaries(&series), Vec::<String>::new());
    // The program goes on; as in the original, the continue callback follows only a
    // checkpoint that succeeded.
    assert!(still_counts(&sb), "{}", sb.read("log"));
    assert_eq!(sb.read("log").matches("continue default").count(), 1, "{}", sb.read("log"));

    // The next checkpoint succeeds and takes the number the failed one had.
    let (_, next) = checkpoint_ok(&sb, &[&pid]);
    assert_eq!(next, series.join("1"));
    assert_eq!(verify_all(&series).len(), 2);
    stop(&mut app);
}

#[test]
fn a_failing_callback_fails_api_signal_and_interval_checkpoints() {
    let sb = Sandbox::new("self-callback-error-api");
    // opalcrs_checkpoint() returns the error to the program.
    let mut app = start(&sb, &selfapp(), &["--register", "--api", "3", "--error-at", "1"], &[]);
    assert!(wait_until(LONG, || sb.read("log").contains("api rc=")), "{}", sb.read("log"));
    assert!(sb.read("log").contains("api rc=-1 state=7"), "{}", sb.read("log"));
    assert!(
        sb.read("app.out").contains("registered checkpoint callback returned -1 (OPAL_ERROR)"),
        "{}",
        sb.read("app.out")
    );
    let series = sb.path(&format!("opal_snapshot_{}.ckpt", app.id()));
    assert!(verify_all(&series).is_empty());
    assert!(still_counts(&sb));
    stop(&mut app);

    // The signal: a warning, no snapshot, and the process does not exit (not even with
    // opal_cr_signal_exit=1, which is for a published snapshot).
    let sb = Sandbox::new("self-callback-error-signal");
    let mut app =
        start(&sb, &selfapp(), &["--error-at", "1"], &[("OMPI_MCA_opal_cr_signal_exit", "1")]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(app.id() as i32, libc::SIGUSR1) };
    let warning = "warning: cr: checkpoint failed: self: checkpoint callback opal_crs_self_user_checkpoint returned -1 (OPAL_ERROR)";
    assert!(wait_until(LONG, || sb.read("app.out").contains(warning)), "{}", sb.read("app.out"));
    let series = sb.path(&format!("opal_snapshot_{}.ckpt", app.id()));
    assert!(verify_all(&series).is_empty());
    assert!(still_counts(&sb));
    assert!(alive(app.id()));
    stop(&mut app);

    // The interval: a warning, and the next interval's checkpoint is number 0.
    let sb = Sandbox::new("self-callback-error-interval");
    let env = [("OMPI_MCA_opal_cr_checkpoint_interval", "1")];
    let mut app = start(&sb, &selfapp(), &["--error-at", "1"], &env);
    assert!(wait_until(LONG, || sb.read("app.out").contains(warning)), "{}", sb.read("app.out"));
    let series = sb.path(&format!("opal_snapshot_{}.ckpt", app.id()));
    assert!(wait_until(LONG, || series.join("0").exists()), "{}", sb.read("log"));
    assert_eq!(verify_all(&series)[0], opalcrs::snapshot::Verdict::Good);
    stop(&mut app);
}

/// A tmpfs of `size` mounted at `path` for one test; unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs on {}", path.display());
        Tmpfs(path)
    }

    /// Bytes free for files.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: statvfs on a NUL-terminated path into a zeroed struct.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail as u64 * stat.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_checkpoint_whose_state_does_not_fit_on_the_disk_fails() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let sb = Sandbox::new("self-disk-full");
    let disk = Tmpfs::mount(sb.path("disk"), "1m");
    let dir = disk.0.to_str().unwrap();
    let mut app = start(&sb, &selfapp(), &["--state-bytes", "200000"], &[]);
    let pid = app.id().to_string();
    let series = disk.0.join(format!("opal_snapshot_{pid}.ckpt"));
    let (_, first) = checkpoint_ok(&sb, &["-w", dir, &pid]);
    let first_state = std::fs::read(first.join("state")).unwrap();

    // Leave 64 KiB: room for the metadata and manifest, not for the 200 KB state.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; (disk.free() - 65536) as usize]).unwrap();
    let out = sb.checkpoint(&["-w", dir, &pid]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("checkpoint callback opal_crs_self_user_checkpoint returned -1"),
        "{stderr}"
    );
    assert!(sb.read("log").contains("checkpoint call 2 could not write its state"));
    assert_eq!(verify_all(&series), [opalcrs::snapshot::Verdict::Good]);
    assert_eq!(std::fs::read(first.join("state")).unwrap(), first_state);
    assert_eq!(temporaries(&series), Vec::<String>::new());
    assert!(still_counts(&sb));

    // With room again the series goes on at the next number.
    std::fs::remove_file(&filler).unwrap();
    let (_, next) = checkpoint_ok(&sb, &["-w", dir, &pid]);
    assert_eq!(next, series.join("1"));
    stop(&mut app);
}

/// Runs `tool` with `args` (bytes, not necessarily UTF-8) in the sandbox.
fn run_tool(
    sb: &Sandbox,
    tool: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> std::process::Output {
    sb.command(tool).args(args).output().unwrap()
}

/// Asserts that `out` is a refusal with exit `code` whose message contains `needle`.
fn assert_refused(out: &std::process::Output, what: &str, code: i32, needle: &str) {
    let (stdout, stderr) = text(out);
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {stderr}");
    assert_eq!(out.status.code(), Some(code), "{what}: {stdout}{stderr}");
    assert!(stderr.contains(needle), "{what}: {needle:?} not in {stderr:?}");
}

#[test]
fn every_tool_refuses_bad_input_with_its_usage_code_and_a_message() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new("tool-args");
    let mut app = start(&sb, &selfapp(), &[], &[]);
    let pid = app.id().to_string();
    let pid = OsStr::new(&pid);
    let bad = OsStr::from_bytes(b"x\xffy");
    let long = "n".repeat(100_000);
    let long = OsStr::new(&long);
    let missing = sb.path("no-such-file.conf");
    let missing = missing.as_os_str();
    let s = |text: &'static str| OsStr::new(text);
    let utf8 = "not valid UTF-8";
    let keep = [s("-mca"), s("crs_base_snapshot_keep"), s("banana")];
    let bad_keep = "bad value \"banana\" for parameter crs_base_snapshot_keep";
    let no_file = "cannot read parameter file";
    let too_long = "longer than 255 bytes";

    let checkpoint = checkpoint_tool();
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (vec![s("-n"), bad, pid], utf8),
        (vec![s("-w"), bad, pid], utf8),
        (vec![bad], utf8),
        ([&keep[..], &[pid]].concat(), bad_keep),
        (vec![s("-am"), missing, pid], no_file),
        (vec![s("-n"), long, pid], too_long),
        (vec![s("-w"), long, pid], "longer than 4095 bytes (PATH_MAX)"),
        (vec![s("--timeout"), s("nan"), pid], "--timeout"),
    ];
    for (args, needle) in &cases {
        assert_refused(
            &run_tool(&sb, &checkpoint, args),
            &format!("opal-checkpoint {args:?}"),
            1,
            needle,
        );
    }
    // None of them reached the process.
    assert!(!sb.path(&format!("opal_snapshot_{}.ckpt", app.id())).exists());
    // A timeout too long for the clock is no limit, not a panic.
    let out = run_tool(&sb, &checkpoint, &[s("--timeout"), s("1e30"), pid]);
    assert!(out.status.success(), "{:?}", text(&out));
    stop(&mut app);

    let garbage = sb.path("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(garbage.join("snapshot_meta.data"), b"\x89\xff\x00 not metadata \xfe").unwrap();
    let restart = restart_tool();
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (vec![bad], utf8),
        (vec![s("-w"), bad, s("series")], utf8),
        ([&keep[..], &[s("series")]].concat(), bad_keep),
        (vec![s("-am"), missing, s("series")], no_file),
        (vec![s("--verify"), bad], utf8),
        (vec![long], "File name too long"),
    ];
    for (args, needle) in &cases {
        assert_refused(
            &run_tool(&sb, &restart, args),
            &format!("opal-restart {args:?}"),
            125,
            needle,
        );
    }
    // --verify of something a restart refuses is not "good".
    let out = run_tool(&sb, &restart, &[s("--verify"), garbage.as_os_str()]);
    assert_refused(&out, "opal-restart --verify garbage", 1, "");
    assert!(text(&out).0.contains("State: corrupt: snapshot_meta.data"), "{:?}", text(&out));

    let run = PathBuf::from(env!("CARGO_BIN_EXE_opal-run"));
    let w = [s("-w"), sb.dir.as_os_str()];
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        ([&w[..], &[s("-n"), bad, s("--"), s("true")]].concat(), utf8),
        (vec![s("-w"), bad, s("-n"), s("series"), s("--"), s("true")], utf8),
        ([&w[..], &[s("-n"), long, s("--"), s("true")]].concat(), too_long),
        ([&w[..], &keep[..], &[s("-n"), s("series"), s("--"), s("true")]].concat(), bad_keep),
        (
            [&w[..], &[s("-am"), missing, s("-n"), s("series"), s("--"), s("true")]].concat(),
            no_file,
        ),
    ];
    for (args, needle) in &cases {
        assert_refused(&run_tool(&sb, &run, args), &format!("opal-run {args:?}"), 125, needle);
    }
    // The command and its arguments are passed on as bytes.
    let out = run_tool(
        &sb,
        &run,
        &[
            &w[..],
            &[
                s("-n"),
                s("series"),
                s("--"),
                s("sh"),
                s("-c"),
                s("printf %s \"$1\" > arg"),
                s("sh"),
                bad,
            ],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(std::fs::read(sb.path("arg")).unwrap(), bad.as_bytes());

    let info = PathBuf::from(env!("CARGO_BIN_EXE_opal-info"));
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (vec![s("--param"), bad, s("all")], utf8),
        (keep.to_vec(), bad_keep),
        (vec![s("-am"), missing], no_file),
    ];
    for (args, needle) in &cases {
        assert_refused(&run_tool(&sb, &info, args), &format!("opal-info {args:?}"), 1, needle);
    }
    // A variable of the environment that is not UTF-8 is none of the tools' business.
    let out = sb.command(&info).env("OPALCRS_TEST_BYTES", bad).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    // One of ours that is not is refused.
    let out = sb.command(&info).env("OMPI_MCA_crs_base_snapshot_dir", bad).output().unwrap();
    assert_refused(&out, "opal-info with bytes in a parameter", 1, "expected UTF-8 text");
}

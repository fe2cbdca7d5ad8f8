//! LD_PRELOAD into unmodified C binaries that are not linked with libopalcrs.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(10);

fn library() -> String {
    lib_dir().join("libopalcrs.so").display().to_string()
}

fn start(
    sb: &Sandbox,
    exe: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut command = sb.command(exe);
    command.arg(sb.path("log")).arg(sb.path("state")).args(extra).env("LD_PRELOAD", library());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = sb.spawn(command, "app");
    let ready = format!("main pid={}\n", child.id());
    assert!(
        wait_until(LONG, || sb.read("log").contains(&ready)),
        "no start: {}",
        sb.read("app.out")
    );
    child
}

#[test]
fn self_callbacks_of_a_preloaded_binary_checkpoint_and_restart() {
    let sb = Sandbox::new("preload-self");
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let mut app = start(&sb, &exe, &[], &[]);
    std::thread::sleep(Duration::from_millis(200));
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let snapshot = snapshot_path(&out);
    let meta = std::fs::read_to_string(snapshot.join("snapshot_meta.data")).unwrap();
    assert!(
        meta.contains("# OPAL CRS Component: self") && meta.contains("# OPALCRS Preload: "),
        "{meta}"
    );
    let saved: i64 = sb.read("state").lines().next().unwrap().parse().unwrap();
    stop(&mut app);
    // The restarted program gets the preload again, so its restart callback runs: in
    // the library's constructor, before main and before the program's own constructors.
    let pid_file = sb.path("restart.pid");
    let status = sb
        .command(restart_tool())
        .args(["--fork", snapshot.to_str().unwrap()])
        .stdout(std::fs::File::create(&pid_file).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    sb.adopt(pid);
    let expected = format!("restart value={saved} own_constructor_ran=0");
    assert!(wait_until(LONG, || sb.read("log").contains(&expected)), "{}", sb.read("log"));
    assert!(wait_until(LONG, || sb.read("log").contains(&format!("count {}", saved + 2))));
    assert!(sb.read("log").contains(&format!("main counter={saved}")));
}

#[test]
fn a_binary_without_callbacks_is_checkpointed_with_criu() {
    require_criu!();
    let sb = Sandbox::new("preload-criu");
    let exe = cc_without_library("preload_app.c", "preload-app-plain", &["-DNO_CALLBACKS"]);
    let mut app = start(&sb, &exe, &[], &[]);
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let meta = std::fs::read_to_string(snapshot_path(&out).join("snapshot_meta.data")).unwrap();
    assert!(meta.contains("# OPAL CRS Component: criu"), "{meta}");
    let pid = app.id();
    stop(&mut app);
    let at_kill = last_count(&sb.read("log")).unwrap();
    assert!(wait_until(LONG, || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
    let pid_file = sb.path("restart.pid");
    let status = sb
        .command(restart_tool())
        .args(["--fork", snapshot_path(&out).to_str().unwrap()])
        .stdout(std::fs::File::create(&pid_file).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{}", sb.read("app.out"));
    let restored: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    sb.adopt(restored);
    assert_eq!(restored, pid);
    assert!(
        wait_until(LONG, || last_count(&sb.read("log")).unwrap_or(0) > at_kill + 3),
        "{}",
        sb.read("log")
    );
}

/// Starts preload_app with `--children` and returns it with its forked and its exec'd
/// child (`sleep 60`, once it runs).
fn start_with_children(sb: &Sandbox, env: &[(&str, &str)]) -> (std::process::Child, u32, u32) {
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let pids = sb.path("pids");
    let app = start(sb, &exe, &["--children", pids.to_str().unwrap()], env);
    let text_pids = std::fs::read_to_string(&pids).unwrap();
    let children: Vec<u32> = text_pids.split_whitespace().map(|p| p.parse().unwrap()).collect();
    for child in &children {
        sb.adopt(*child);
    }
    let (forked, execed) = (children[0], children[1]);
    assert!(wait_until(LONG, || std::fs::read_link(format!("/proc/{execed}/exe"))
        .is_ok_and(|e| e.ends_with("sleep"))));
    (app, forked, execed)
}

#[test]
fn children_that_exec_inherit_the_preload_and_a_forked_one_never_answers_for_its_parent() {
    let sb = Sandbox::new("preload-children");
    let (mut app, forked, execed) = start_with_children(&sb, &[]);
    // The forked child closed the parent's socket (its parent lives on).
    let out = sb.checkpoint(&[&forked.to_string()]);
    assert_eq!(out.status.code(), Some(3), "forked child: {:?}", text(&out));
    // The exec'd child has the library from LD_PRELOAD and answers for itself.
    let environ = std::fs::read(format!("/proc/{execed}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("libopalcrs"));
    assert!(wait_until(LONG, || sb
        .checkpoint(&["--status", &execed.to_string()])
        .status
        .success()));
    let status = text(&sb.checkpoint(&["--status", &execed.to_string()])).0;
    assert!(status.contains(&format!("PID: {execed}")), "{status}");
    // The parent still answers.
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    stop(&mut app);
}

#[test]
fn with_preload_children_off_children_that_exec_do_not_inherit_it() {
    let sb = Sandbox::new("preload-children-off");
    let (mut app, _, execed) =
        start_with_children(&sb, &[("OMPI_MCA_opal_cr_preload_children", "0")]);
    let environ = std::fs::read(format!("/proc/{execed}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("libopalcrs"),
        "the exec'd child inherited the preload"
    );
    let maps = std::fs::read_to_string(format!("/proc/{execed}/maps")).unwrap();
    assert!(!maps.contains("libopalcrs"));
    assert_eq!(sb.checkpoint(&[&execed.to_string()]).status.code(), Some(3));
    stop(&mut app);
}

#[test]
fn dd_keeps_its_sigusr1_statistics() {
    let sb = Sandbox::new("preload-dd");
    let mut command = sb.command("dd");
    command.args(["if=/dev/zero", "of=/dev/null", "bs=1k"]).env("LD_PRELOAD", library());
    let mut dd = sb.spawn(command, "dd");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(dd.id() as i32, libc::SIGUSR1) };
    assert!(wait_until(LONG, || sb.read("dd.out").contains("records in")), "{}", sb.read("dd.out"));
    assert!(alive(dd.id()), "dd died of SIGUSR1");
    // And it is a libopalcrs process (the control socket answers).
    let status = sb.checkpoint(&["--status", &dd.id().to_string()]);
    assert!(status.status.success(), "{:?}", text(&status));
    stop(&mut dd);
}

#[test]
fn a_bad_parameter_disables_cr_with_a_warning_and_the_program_runs() {
    let sb = Sandbox::new("preload-badparam");
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let mut app = start(&sb, &exe, &[], &[("OMPI_MCA_opal_cr_signal", "abc")]);
    assert!(
        wait_until(LONG, || sb.read("app.out").contains("checkpoint/restart disabled")),
        "{}",
        sb.read("app.out")
    );
    assert!(sb.read("app.out").contains("opal_cr_signal"));
    let out = sb.checkpoint(&[&app.id().to_string()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(alive(app.id()));
    stop(&mut app);
}

#[test]
fn open_mpis_own_library_keeps_us_out() {
    let sb = Sandbox::new("preload-openmpi");
    let fake = lib_dir().join("c-tests/libopen-pal.so.40");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&fake)
        .arg(repo().join("c-tests/fake_open_pal.c"))
        .status()
        .unwrap();
    assert!(status.success());
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let preload = format!("{}:{}", fake.display(), library());
    let mut command = sb.command(&exe);
    command.arg(sb.path("log")).arg(sb.path("state")).env("LD_PRELOAD", preload);
    let mut app = sb.spawn(command, "app");
    assert!(
        wait_until(LONG, || sb.read("app.out").contains("libopen-pal")),
        "{}",
        sb.read("app.out")
    );
    assert!(wait_until(LONG, || sb.read("log").contains("main pid=")));
    assert_eq!(sb.checkpoint(&[&app.id().to_string()]).status.code(), Some(3));
    stop(&mut app);
}

/// The count a wrapped preload_app stops at, and its sum then (what an uninterrupted run
/// logs).
const LIMIT: i64 = 60;

/// The ways a program is commonly started through something else.
const WRAPPERS: &[&str] = &["setsid", "nohup", "env", "timeout", "stdbuf", "script", "shim"];

/// `exe ARGS` started through `how`, with the library preloaded into the first process.
fn wrapped(sb: &Sandbox, how: &str, exe: &std::path::Path, args: &[&str]) -> Command {
    use std::os::unix::fs::PermissionsExt;
    let script = |name: &str, text: String| {
        let path = sb.path(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let exe = exe.to_str().unwrap();
    let (program, before): (std::path::PathBuf, Vec<&str>) = match how {
        "setsid" | "nohup" => (how.into(), vec![exe]),
        "env" => ("env".into(), vec!["X=1", exe]),
        "timeout" => ("timeout".into(), vec!["600", exe]),
        "stdbuf" => ("stdbuf".into(), vec!["-oL", exe]),
        // A job script: the shell runs the program as its child and goes on after it.
        "script" => {
            let text = "#!/bin/bash\n\"$@\"\necho \"script: status $?\"\n".to_string();
            (script("job.sh", text), vec![exe])
        }
        // A pyenv-style shim: `env` finds bash, which execs the real program.
        "shim" => (script("shim", format!("#!/usr/bin/env bash\nexec '{exe}' \"$@\"\n")), vec![]),
        other => panic!("unknown wrapper {other}"),
    };
    let mut command = sb.command(program);
    command.args(before).args(args).env("LD_PRELOAD", library());
    command
}

/// The PID that preload_app last logged as its own.
fn logged_pid(sb: &Sandbox) -> Option<u32> {
    sb.read("log")
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("main pid="))
        .and_then(|p| p.parse().ok())
}

/// For every wrapper: preload through it, checkpoint the real program by its PID, kill
/// it, restart, and the restarted program ends with the result of an uninterrupted run.
fn checkpoint_through_every_wrapper(component: &str, exe: &std::path::Path) {
    let expected = format!("done count={LIMIT} sum={}", LIMIT * (LIMIT + 1) / 2);
    for how in WRAPPERS {
        let sb = Sandbox::new(&format!("wrapped-{component}-{how}"));
        let (log, state) = (sb.path("log"), sb.path("state"));
        let args = [log.to_str().unwrap(), state.to_str().unwrap(), "--limit", &LIMIT.to_string()];
        let mut wrapper = sb.spawn(wrapped(&sb, how, exe, &args), "app");
        assert!(wait_until(LONG, || logged_pid(&sb).is_some()), "{how}: {}", sb.read("app.out"));
        let pid = logged_pid(&sb).unwrap();
        sb.adopt(pid);
        assert!(wait_until(LONG, || last_count(&sb.read("log")).unwrap_or(0) >= 8));
        if how == &"timeout" && component == "criu" {
            // The wrapper that stays is a C/R process too: its PID dumps it with the
            // program below it (one ids image per process).
            let (_, tree) = checkpoint_ok(&sb, &["-n", "timeout-tree", &wrapper.id().to_string()]);
            let processes = std::fs::read_dir(&tree)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ids-"))
                .count();
            assert_eq!(processes, 2, "timeout's snapshot {}", tree.display());
        }
        // --wait: after timeout's dump the program binds its socket again a moment later.
        let out = sb.checkpoint(&["--wait", &pid.to_string()]);
        assert!(out.status.success(), "{how} ({component}): {:?}", text(&out));
        let meta = std::fs::read_to_string(snapshot_path(&out).join("snapshot_meta.data")).unwrap();
        assert!(meta.contains(&format!("# OPAL CRS Component: {component}")), "{how}: {meta}");
        kill(pid);
        stop(&mut wrapper);
        assert!(wait_until(LONG, || !alive(pid)), "{how}: {pid} lives on after SIGKILL");
        assert!(!sb.read("log").contains("done"), "{how}: ended before it was killed");
        let (status, _, stderr) = run_restart(&sb, &[snapshot_path(&out).to_str().unwrap()]);
        assert!(status.success(), "{how} ({component}): restart {status:?}: {stderr}");
        assert!(sb.read("log").contains(&expected), "{how} ({component}): {}", sb.read("log"));
    }
}

#[test]
fn self_program_started_through_any_wrapper_is_checkpointed_by_its_pid() {
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    checkpoint_through_every_wrapper("self", &exe);
}

#[test]
fn plain_program_started_through_any_wrapper_is_checkpointed_by_its_pid() {
    require_criu!();
    let exe = cc_without_library("preload_app.c", "preload-app-plain", &["-DNO_CALLBACKS"]);
    checkpoint_through_every_wrapper("criu", &exe);
}

/// preload_app becomes a daemon (`once`: fork, the parent exits; `twice`: and setsid,
/// fork again); the PID that keeps running is checkpointed, killed and restarted, and
/// ends with the result of an uninterrupted run.
fn daemon_checkpointed_by_the_pid_that_runs_on(component: &str, exe: &std::path::Path) {
    let expected = format!("done count={LIMIT} sum={}", LIMIT * (LIMIT + 1) / 2);
    for how in ["once", "twice"] {
        let sb = Sandbox::new(&format!("daemon-{component}-{how}"));
        let (log, state) = (sb.path("log"), sb.path("state"));
        let limit = LIMIT.to_string();
        let args = [log.to_str().unwrap(), state.to_str().unwrap(), "--limit", &limit];
        let mut command = sb.command(exe);
        command.args(args).args(["--daemon", how]).env("LD_PRELOAD", library());
        let mut first = sb.spawn(command, "app");
        assert!(wait_until(LONG, || logged_pid(&sb).is_some()), "{how}: {}", sb.read("app.out"));
        let pid = logged_pid(&sb).unwrap();
        sb.adopt(pid);
        assert_ne!(pid, first.id());
        assert!(first.wait().unwrap().success());
        assert!(wait_until(LONG, || last_count(&sb.read("log")).unwrap_or(0) >= 8));
        // It takes over the runtime once it sees its parent gone.
        let answers = || sb.checkpoint(&["--status", &pid.to_string()]).status.success();
        assert!(wait_until(LONG, answers), "daemon {how} ({component}) never answers");
        let out = sb.checkpoint(&[&pid.to_string()]);
        assert!(out.status.success(), "daemon {how} ({component}): {:?}", text(&out));
        let meta = std::fs::read_to_string(snapshot_path(&out).join("snapshot_meta.data")).unwrap();
        assert!(meta.contains(&format!("# OPAL CRS Component: {component}")), "{how}: {meta}");
        kill(pid);
        assert!(wait_until(LONG, || !alive(pid)), "{how}: {pid} lives on after SIGKILL");
        assert!(!sb.read("log").contains("done"), "{how}: ended before it was killed");
        let (status, _, stderr) = run_restart(&sb, &[snapshot_path(&out).to_str().unwrap()]);
        assert!(status.success(), "daemon {how} ({component}): restart {status:?}: {stderr}");
        // A restarted self daemon forks away again: adopt its new PID.
        if let Some(again) = logged_pid(&sb).filter(|p| *p != pid) {
            sb.adopt(again);
        }
        assert!(
            wait_until(LONG, || sb.read("log").contains(&expected)),
            "daemon {how} ({component}): {}",
            sb.read("log")
        );
    }
}

#[test]
fn a_self_daemon_is_checkpointed_by_the_pid_that_runs_on() {
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    daemon_checkpointed_by_the_pid_that_runs_on("self", &exe);
}

#[test]
fn a_plain_daemon_is_checkpointed_by_the_pid_that_runs_on() {
    require_criu!();
    let exe = cc_without_library("preload_app.c", "preload-app-plain", &["-DNO_CALLBACKS"]);
    daemon_checkpointed_by_the_pid_that_runs_on("criu", &exe);
}

/// `opal_cr_preload_children=0` keeps the library in the one process that loaded it: a
/// forked child gets no watcher thread (so it may, e.g., `unshare(CLONE_NEWUSER)`) and
/// a daemon is not followed.
#[test]
fn with_preload_children_off_a_forked_child_has_no_thread_of_ours() {
    let exe = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let sb = Sandbox::new("daemon-not-followed");
    let (log, state) = (sb.path("log"), sb.path("state"));
    let mut command = sb.command(&exe);
    command.args([log.to_str().unwrap(), state.to_str().unwrap(), "--limit", "100000"]);
    command.args(["--daemon", "once"]).env("LD_PRELOAD", library());
    command.env("OMPI_MCA_opal_cr_preload_children", "0");
    let mut first = sb.spawn(command, "app");
    assert!(wait_until(LONG, || logged_pid(&sb).is_some()), "{}", sb.read("app.out"));
    let pid = logged_pid(&sb).unwrap();
    sb.adopt(pid);
    assert!(first.wait().unwrap().success());
    assert!(wait_until(LONG, || last_count(&sb.read("log")).unwrap_or(0) >= 8));
    // A watcher would have taken over within about 0.1 s.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status.lines().find(|l| l.starts_with("Threads:")).unwrap().to_string();
    assert_eq!(threads.split_whitespace().nth(1), Some("1"), "daemon {pid}: {threads}");
    let out = sb.checkpoint(&["--status", &pid.to_string()]);
    assert!(!out.status.success(), "the daemon answers: {:?}", text(&out));
    kill(pid);
    assert!(wait_until(LONG, || !alive(pid)));
}

/// A forked child whose only thread ends alone (the raw exit system call, also under
/// SECCOMP_MODE_STRICT, or killed by a seccomp filter) ends as a process, as without the
/// library (zdtm seccomp_*: the orphan watcher thread kept such a child alive).
#[test]
fn a_forked_child_whose_only_thread_ends_ends() {
    let sb = Sandbox::new("preload-lone-thread");
    let exe = cc_without_library("lone_thread_exit.c", "lone-thread-exit", &[]);
    let mut command = sb.command(&exe);
    command.env("LD_PRELOAD", library());
    let mut app = sb.spawn(command, "app");
    let status = wait_exit(&mut app, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", sb.read("app.out"));
}

/// Lines the job script's producer writes, 50 ms apart, and what its consumer sums.
const JOB_LINES: u64 = 100;

/// Starts a preloaded job script whose two children (a python3 producer and an `awk`
/// consumer, both preloaded) are joined by a pipe; its output goes through a pipe to
/// `<sb>/job.out`. Returns the outer shell and the script's PID once it runs.
fn start_job_script(sb: &Sandbox) -> (std::process::Child, u32) {
    use std::os::unix::fs::PermissionsExt;
    let script = sb.path("job.sh");
    let text = format!(
        "#!/bin/bash\npython3 -uc 'import time\nfor i in range(1, {}): print(i); time.sleep(0.05)' | awk '{{ s += $1 }} END {{ print \"sum \" s }}'\necho \"script: children ended with $?\"\nexit 7\n",
        JOB_LINES + 1
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = sb.command("bash");
    // In a session of its own, as a batch system starts a job script.
    let line = format!("LD_PRELOAD='{}' setsid '{}' | cat > job.out", library(), script.display());
    command.args(["-c", &line]).env("OMPI_MCA_crs", "criu");
    let outer = sb.spawn(command, "outer");
    let mut job = None;
    assert!(wait_until(LONG, || {
        job = process_tree(outer.id()).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "job.sh")
        });
        job.is_some_and(|j| process_tree(j).len() >= 3)
    }));
    // Each of the three answers (its library has started); a forked shell that has
    // not exec'd yet may be in the tree for a moment.
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let all_answer = || {
        let tree = process_tree(job.unwrap());
        let names: Vec<String> = tree.iter().map(|p| comm(*p).trim().to_string()).collect();
        ["job.sh", "python3", "awk"].iter().all(|n| names.iter().any(|m| m == n))
            && tree.iter().all(|p| sb.checkpoint(&["--status", &p.to_string()]).status.success())
    };
    assert!(wait_until(LONG, all_answer), "the job's processes never all answer");
    (outer, job.unwrap())
}

#[test]
fn a_job_script_is_checkpointed_with_its_children_by_its_pid_and_restored_twice() {
    require_criu!();
    let expected =
        format!("sum {}\nscript: children ended with 0\n", JOB_LINES * (JOB_LINES + 1) / 2);
    let sb = Sandbox::new("preload-job-tree");
    let (mut outer, job) = start_job_script(&sb);
    std::thread::sleep(Duration::from_millis(800));
    let tree = process_tree(job);
    for pid in &tree {
        sb.adopt(*pid);
    }
    let out = sb.checkpoint(&[&job.to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    // Restored while the original tree still runs: a fresh PID namespace, and no
    // control socket of the original's children in the way.
    let (status, stdout, stderr) = run_restart(&sb, &[snapshot_path(&out).to_str().unwrap()]);
    assert_eq!(status.code(), Some(7), "restore beside the original: {stdout}{stderr}");
    assert!(stderr.contains("new PID namespace"), "{stderr}");
    assert_eq!(stdout, expected, "restore beside the original: {stderr}");
    assert!(outer.wait().unwrap().success());
    assert_eq!(sb.read("job.out"), expected, "the original run");

    // Once more, the second time after killing the whole tree, children first so that
    // each is reaped by its parent and its PID is free again: the tree comes back at
    // its own PIDs, and each restored process can be checkpointed again (--wait: right
    // after the restore, or after its parent's checkpoint, it may still be quiet).
    let (mut outer, job) = start_job_script(&sb);
    std::thread::sleep(Duration::from_millis(800));
    let tree = process_tree(job);
    let out = sb.checkpoint(&[&job.to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    for pid in tree.iter().rev() {
        kill(*pid);
        assert!(wait_until(LONG, || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
    }
    stop(&mut outer);
    let (restored, stderr) = restart_fork(&sb, &[snapshot_path(&out).to_str().unwrap()]);
    assert_eq!(restored, job, "{stderr}");
    for pid in process_tree(restored) {
        sb.adopt(pid);
        let again = sb.checkpoint(&["--wait", "-n", &format!("again-{pid}"), &pid.to_string()]);
        assert!(again.status.success(), "restored {pid}: {:?}", text(&again));
    }
    assert!(
        wait_until(LONG, || sb.read("restart.stdout").ends_with(&expected)),
        "restore after the kill: {}{stderr}",
        sb.read("restart.stdout")
    );
}

/// The PID a process sees for itself (the last of its `NSpid:` line).
fn pid_inside(pid: u32) -> Option<u32> {
    proc_status(pid, "NSpid")?.split_whitespace().last()?.parse().ok()
}

/// A tree restored into a fresh PID namespace is checkpointed again by its root's PID as
/// seen from outside, its namespace killed, and restored again, for three rounds, each
/// into a fresh namespace; the last run ends as an uninterrupted one would.
#[test]
fn a_job_tree_restored_into_a_fresh_pid_namespace_is_checkpointed_again_round_after_round() {
    require_criu!();
    let expected =
        format!("sum {}\nscript: children ended with 0\n", JOB_LINES * (JOB_LINES + 1) / 2);
    let sb = Sandbox::new("preload-job-retree");
    let (mut outer, job) = start_job_script(&sb);
    std::thread::sleep(Duration::from_millis(800));
    for pid in process_tree(job) {
        sb.adopt(pid);
    }
    let out = sb.checkpoint(&[&job.to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let mut snapshot = snapshot_path(&out);
    for round in 1..=3 {
        // The original still runs in the first round; later ones ask for a namespace.
        let (restored, stderr) =
            restart_fork(&sb, &["-mca", "crs_criu_pidns", "always", snapshot.to_str().unwrap()]);
        assert!(stderr.contains("new PID namespace"), "round {round}: {stderr}");
        let tree = process_tree(restored);
        for pid in &tree {
            sb.adopt(*pid);
        }
        assert_eq!(pid_inside(restored), Some(job), "round {round}: the root's own PID");
        let init: u32 = proc_status(restored, "PPid").unwrap().parse().unwrap();
        sb.adopt(init);
        std::thread::sleep(Duration::from_millis(400));
        let name = format!("round-{round}");
        let again = sb.checkpoint(&["--wait", "-n", &name, &restored.to_string()]);
        assert!(again.status.success(), "round {round}: {:?}", text(&again));
        snapshot = snapshot_path(&again);
        // A process inside the tree, by its PID outside: it alone (with its descendants).
        let comm = |pid: &&u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        let producer = *tree.iter().find(|p| comm(p).as_deref() == Some("python3\n")).unwrap();
        let inner =
            sb.checkpoint(&["--wait", "-n", &format!("{name}-inner"), &producer.to_string()]);
        assert!(inner.status.success(), "round {round}: {:?}", text(&inner));
        let pids = opalcrs::components::criu::restore::image_pids(&snapshot_path(&inner)).unwrap();
        assert_eq!(pids.first().copied(), pid_inside(producer).map(|p| p as i32));
        assert!(!pids.contains(&(job as i32)), "round {round}: the script in {pids:?}");
        // The namespace ends with its init, and the restored tree with it.
        kill(init);
        assert!(
            wait_until(LONG, || tree.iter().all(|pid| !alive(*pid))),
            "round {round}: the restored tree outlives its namespace"
        );
    }
    let (status, stdout, stderr) =
        run_restart(&sb, &["-mca", "crs_criu_pidns", "always", snapshot.to_str().unwrap()]);
    assert_eq!(status.code(), Some(7), "last restore: {stdout}{stderr}");
    assert_eq!(stdout, expected, "last restore: {stderr}");
    assert!(outer.wait().unwrap().success());
    assert_eq!(sb.read("job.out"), expected, "the original run");
}

/// A preloaded `cat` reading a pipe, restored into a fresh PID namespace with a file
/// for stdin and another for stdout (each reaches it through a pipe that the namespace
/// holder relays): it copies the file and ends at its end, and opal-restart with it.
#[test]
fn a_process_restored_into_a_fresh_pid_namespace_reads_our_stdin_file_to_its_end() {
    require_criu!();
    let sb = Sandbox::new("preload-pidns-stdin");
    let mut command = sb.command("cat");
    command
        .env("LD_PRELOAD", library())
        .env("OMPI_MCA_crs", "criu")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut cat = sb.spawn_in_session(command).unwrap();
    let pid = cat.id().to_string();
    let answers = || sb.checkpoint(&["--status", &pid]).status.success();
    assert!(wait_until(LONG, answers), "cat never answers");
    let out = sb.checkpoint(&[&pid]);
    assert!(out.status.success(), "{:?}", text(&out));
    let lines: String = (1..=5000).map(|n| format!("line {n}\n")).collect();
    std::fs::write(sb.path("input"), &lines).unwrap();
    let (out_file, err_file) = (sb.path("restart.stdout"), sb.path("restart.stderr"));
    let restart = sb
        .command(restart_tool())
        .args(["-mca", "crs_criu_pidns", "always", snapshot_path(&out).to_str().unwrap()])
        .stdin(std::fs::File::open(sb.path("input")).unwrap())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    sb.adopt(restart.id());
    let status = wait_exit(&mut { restart }, LONG);
    kill_and_reap(&mut cat);
    let stderr = sb.read("restart.stderr");
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {stderr}");
    assert!(stderr.contains("new PID namespace"), "{stderr}");
    assert!(sb.read("restart.stdout") == lines, "cat's output differs from its input: {stderr}");
}

/// Launchers that only pass the program through behave as without the library: same
/// output, same messages, same exit status.
#[test]
fn pass_through_launchers_behave_the_same_under_the_preload() {
    let sb = Sandbox::new("preload-pass-through");
    let job = sb.path("pass.sh");
    std::fs::write(
        &job,
        "#!/bin/bash\nsh -c 'echo in \"$X\"; echo err >&2; exit 3'\necho after $?\nexit 4\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    let job = job.to_str().unwrap();
    let launchers: &[&[&str]] = &[
        &["setsid", "-w", job],
        &["nohup", job],
        &["env", "X=1", job],
        &["timeout", "600", job],
        &["stdbuf", "-oL", job],
        &["bash", "-c", job],
        &[job],
    ];
    for launcher in launchers {
        let run = |preload: bool| {
            let mut command = sb.command(launcher[0]);
            command.args(&launcher[1..]);
            if preload {
                command.env("LD_PRELOAD", library());
            }
            let out = command.output().unwrap();
            (out.status.code(), text(&out))
        };
        let (plain, preloaded) = (run(false), run(true));
        assert_eq!(plain.0, Some(4), "{launcher:?}: {plain:?}");
        assert_eq!(preloaded, plain, "{launcher:?}");
    }
}

#[test]
fn preloaded_programs_enter_user_namespaces_and_stay_checkpointable() {
    let sb = Sandbox::new("preload-userns");
    // `unshare --user` itself: a single-threaded process is required by the kernel.
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let out = sb
        .command("unshare")
        .args(["--user", "readlink", "/proc/self/ns/user"])
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "unshare --user under the preload failed: {stderr}");
    assert_ne!(stdout.trim(), ours.to_string_lossy(), "no new user namespace");

    // A forked child, then the program itself; afterwards it answers again.
    let exe = cc_without_library("enter_user_ns.c", "enter-user-ns", &[]);
    let mut command = sb.command(&exe);
    command.arg(sb.path("log")).env("LD_PRELOAD", library());
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    assert!(wait_until(LONG, || sb.read("log").contains("unshared")), "{}", sb.read("app.err"));
    let log = sb.read("log");
    // Root (the test) is mapped to root inside, so its tools are served there.
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny").unwrap();
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 1\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 0 1\n").unwrap();
    assert!(wait_until(LONG, || sb.read("log").contains("mapped 0")), "{}", sb.read("log"));
    let status = sb.checkpoint(&["--status", &pid.to_string()]);
    // setns into that namespace (nsenter), preloaded too.
    let entered = sb
        .command("nsenter")
        .arg(format!("--user=/proc/{pid}/ns/user"))
        .args(["readlink", "/proc/self/ns/user"])
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    kill_and_reap(&mut app);
    assert!(entered.status.success(), "nsenter --user under the preload: {:?}", text(&entered));
    assert_eq!(text(&entered).0.trim(), theirs.to_string_lossy());
    assert!(log.contains("child 0\n"), "a forked child could not enter a user namespace: {log}");
    assert!(log.contains("unshared 0\n"), "the program could not enter a user namespace: {log}");
    assert!(status.status.success(), "no answer after the namespace change: {:?}", text(&status));
}

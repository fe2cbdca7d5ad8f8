//! Nothing a program can observe changes because the library is loaded, checkpointed
//! or restored through the criu component: its descriptor numbers, its stopped
//! children, its pending signals, its signalfd and timers.

mod common;
use common::*;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(10);

fn library() -> String {
    lib_dir().join("libopalcrs.so").display().to_string()
}

#[test]
fn the_librarys_descriptors_leave_the_numbers_programs_use_free() {
    let sb = Sandbox::new("state-fds");
    let exe = cc_without_library("fd_numbers.c", "fd-numbers", &[]);
    // Without the library: the numbers the program sees (it inherits whatever the test
    // harness leaves open).
    std::fs::write(sb.path("go-plain"), "").unwrap();
    let mut command = sb.command(&exe);
    command.arg(sb.path("go-plain"));
    let mut plain = sb.spawn(command, "plain");
    assert!(
        wait_until(LONG, || sb.read("plain.out").contains("dup2:")),
        "{}",
        sb.read("plain.out")
    );
    kill_and_reap(&mut plain);
    let expected = sb.read("plain.out");
    let mut command = sb.command(&exe);
    command.arg(sb.path("go")).env("LD_PRELOAD", library());
    let mut app = sb.spawn(command, "app");
    let pid = app.id().to_string();
    assert!(
        wait_until(LONG, || sb.checkpoint(&["--status", &pid]).status.success()),
        "the library never answered: {}",
        sb.read("app.out")
    );
    std::fs::write(sb.path("go"), "").unwrap();
    assert!(wait_until(LONG, || sb.read("app.out").contains("dup2:")), "{}", sb.read("app.out"));
    let out = sb.read("app.out");
    assert_eq!(out, expected, "the library holds a low descriptor");
    assert!(out.contains("dup2: ok\n"), "{out}");
    // The library still answers after the program took numbers for itself.
    let status = sb.checkpoint(&["--status", &pid]);
    assert!(status.status.success(), "{}", text(&status).1);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        if fd >= 1000 {
            let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
            let flags = flags.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            let flags = u32::from_str_radix(flags, 8).unwrap();
            assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "fd {fd} lacks close-on-exec");
        }
    }
    kill_and_reap(&mut app);
}

/// A signal sent to the whole process right after `opal_init` and blocked by the program
/// stays pending for the program: the listener thread, not yet run when it came (the
/// program runs SCHED_FIFO on one CPU), took it with the mask it inherited (zdtm
/// sigpending, now and then under load).
#[test]
fn a_signal_the_program_blocks_is_not_taken_by_a_library_thread_not_yet_run() {
    if !is_root() {
        eprintln!("skipped: SCHED_FIFO needs root");
        return;
    }
    let sb = Sandbox::new("state-signal-after-init");
    let exe = cc("signal_after_init.c", "signal-after-init", &[]);
    let mut app = sb.spawn(sb.command(&exe), "app");
    let status = wait_exit(&mut app, LONG);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", sb.read("app.out"));
}

/// Waits until `pid` has left /proc (an orphan is reaped by whoever adopted it).
fn gone(pid: u32) -> bool {
    wait_until(LONG, || !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

#[test]
fn a_restore_gives_back_stopped_children_pending_signals_signalfd_and_timers() {
    require_criu!();
    let sb = Sandbox::new("state-signals");
    let exe = cc_without_library("signal_state.c", "signal-state", &[]);
    let mut command = sb.command(&exe);
    command.arg(sb.path("go")).env("LD_PRELOAD", library()).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    assert!(wait_until(LONG, || sb.read("app.out").contains("ready ")), "{}", sb.read("app.out"));
    let child: u32 = sb.read("app.out").split_whitespace().nth(1).unwrap().parse().unwrap();
    sb.adopt(child);
    checkpoint_ok(&sb, &[&pid.to_string()]);
    kill_and_reap(&mut app);
    kill(child);
    assert!(gone(child), "the stopped child {child} was not reaped");

    let (restored, stderr) = restart_fork(&sb, &[&format!("opal_snapshot_{pid}.ckpt")]);
    assert_eq!(restored, pid, "{stderr}");
    std::fs::write(sb.path("go"), "").unwrap();
    assert!(wait_until(LONG, || sb.read("app.out").contains("verdict:")), "{}", sb.read("app.out"));
    let out = sb.read("app.out");
    assert!(out.contains("verdict: ok"), "the restore changed the process's state:\n{out}");
}

/// A checkpoint leaves the process with the mappings it had: the threads it starts
/// reuse stacks and malloc arenas the library reserved at `opal_init` (8 areas more
/// before; zdtm vdso-proxy allows 2, for the vDSO). The second checkpoint too.
#[test]
fn a_checkpoint_leaves_the_process_with_as_many_mappings_as_before() {
    require_criu!();
    let sb = Sandbox::new("state-maps");
    let mut command = sb.command("sleep");
    command.arg("60").env("LD_PRELOAD", library()).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id().to_string();
    assert!(wait_until(LONG, || sb.checkpoint(&["--status", &pid]).status.success()));
    let mappings = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let before = mappings();
    for round in 1..=2 {
        checkpoint_ok(&sb, &[&pid]);
        let after = mappings();
        assert_eq!(
            after.lines().count(),
            before.lines().count(),
            "checkpoint {round}: before\n{before}after\n{after}"
        );
    }
    kill_and_reap(&mut app);
}

#[test]
fn a_failed_dump_names_the_log_it_keeps_and_stays_out_of_the_programs_stderr() {
    require_criu!();
    let sb = Sandbox::new("state-failed-dump");
    // A file lock, which CRIU refuses to dump without its file-locks option.
    let locker = format!(
        "import fcntl, time\n\
         f = open('{}', 'w')\n\
         fcntl.flock(f, fcntl.LOCK_EX)\n\
         print('ready', flush=True)\n\
         time.sleep(60)\n",
        sb.path("locked").display()
    );
    let mut command = sb.command("/usr/bin/python3");
    command
        .args(["-c", &locker])
        .env("LD_PRELOAD", library())
        .env("OMPI_MCA_crs", "criu")
        .env("OMPI_MCA_crs_criu_file_locks", "0");
    let mut app = sb.spawn(command, "app");
    assert!(wait_until(LONG, || sb.read("app.out").contains("ready")), "{}", sb.read("app.out"));

    let out = sb.checkpoint(&[&app.id().to_string()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let log = stderr
        .split("log ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c == ':' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no log named: {stderr}"));
    assert!(std::path::Path::new(log).is_file(), "the log named does not exist: {stderr}");
    assert!(!stderr.contains("RLIMIT_NOFILE"), "CRIU's harmless noise shown: {stderr}");
    assert_eq!(stderr.matches("criu dump").count(), 1, "said more than once: {stderr}");
    std::thread::sleep(Duration::from_millis(200));
    let program = sb.read("app.out");
    assert_eq!(program, "ready\n", "the failure went into the program's own output");
    kill_and_reap(&mut app);
}

/// A preloaded program that only waits (for a file that never comes).
fn start_waiting(sb: &Sandbox) -> std::process::Child {
    let exe = cc_without_library("fd_numbers.c", "fd-numbers", &[]);
    let mut command = sb.command(&exe);
    command.arg(sb.path("never")).env("LD_PRELOAD", library()).env("OMPI_MCA_crs", "criu");
    let app = sb.spawn(command, "app");
    let pid = app.id().to_string();
    assert!(wait_until(LONG, || sb.checkpoint(&["--status", &pid]).status.success()));
    app
}

#[test]
fn a_pid_held_by_a_zombie_for_a_moment_is_waited_for_and_one_held_longer_is_named() {
    require_criu!();
    let sb = Sandbox::new("state-zombie");
    for (reaped_after, same_pid) in [(Duration::from_millis(1000), true), (LONG, false)] {
        let mut app = start_waiting(&sb);
        let pid = app.id();
        checkpoint_ok(&sb, &[&pid.to_string()]);
        // The killed original stays a zombie until we reap it, as under a slow init.
        // SAFETY: plain kill of our own child, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let reaper = std::thread::spawn(move || {
            std::thread::sleep(reaped_after);
            app.wait().unwrap();
        });
        let (restored, stderr) = restart_fork(&sb, &[&format!("opal_snapshot_{pid}.ckpt")]);
        if same_pid {
            assert_eq!(restored, pid, "not restored in its own PID: {stderr}");
            assert!(!stderr.contains("new PID namespace"), "{stderr}");
        } else {
            assert_ne!(restored, pid);
            let named = format!("PID {pid} is held by a zombie (PPID {})", std::process::id());
            assert!(stderr.contains(&named), "the zombie is not named: {stderr}");
        }
        kill(restored);
        reaper.join().unwrap();
        assert!(wait_until(LONG, || !std::path::Path::new(&format!("/proc/{restored}")).exists()));
    }
}

#[test]
fn a_checkpoint_sends_the_program_no_sigchld() {
    require_criu!();
    let sb = Sandbox::new("state-sigchld");
    let exe = cc_without_library("sigchld_count.c", "sigchld-count", &[]);
    let mut command = sb.command(&exe);
    command.arg(sb.path("go")).env("LD_PRELOAD", library()).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id().to_string();
    assert!(wait_until(LONG, || sb.checkpoint(&["--status", &pid]).status.success()));
    checkpoint_ok(&sb, &[&pid]);
    std::fs::write(sb.path("go"), "").unwrap();
    assert!(wait_until(LONG, || sb.read("app.out").contains("sigchld:")), "{}", sb.read("app.out"));
    assert!(
        sb.read("app.out").contains("sigchld: 0 reaped: 0\n"),
        "the checkpoint's helper was seen: {}",
        sb.read("app.out")
    );
    assert!(wait_exit(&mut app, LONG).is_some_and(|status| status.success()));
}

#[test]
fn a_child_stopped_before_its_fork_handlers_keeps_no_connection_unanswered_and_stays_stopped() {
    require_criu!();
    let sb = Sandbox::new("state-stopped-in-fork");
    let exe = cc_without_library("stopped_in_fork.c", "stopped-in-fork", &[]);
    let mut command = sb.command(&exe);
    command.env("LD_PRELOAD", library()).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    assert!(wait_until(LONG, || sb.read("app.out").contains("ready ")), "{}", sb.read("app.out"));
    let child: u32 = sb.read("app.out").split_whitespace().nth(1).unwrap().parse().unwrap();
    sb.adopt(child);
    let before = opalcrs::control::locate(pid as i32).unwrap();
    checkpoint_ok(&sb, &["--timeout", "20", &pid.to_string()]);

    // The stopped child still holds the socket the process closed for its dump: a tool
    // that connects there (it found the name just before) is refused, or answered,
    // never left waiting (opal-checkpoint timed out so on zdtm `stopped`).
    let address = SocketAddr::from_abstract_name(before.name.as_bytes()).unwrap();
    if let Ok(stream) = UnixStream::connect_addr(&address) {
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let request = opalcrs::control::RequestEnvelope {
            v: opalcrs::control::PROTOCOL_VERSION,
            request: opalcrs::control::Request::Status,
        };
        opalcrs::control::write_message(&stream, &request).unwrap();
        let reply: std::io::Result<opalcrs::control::Reply> =
            opalcrs::control::read_message(&stream);
        assert!(
            !reply.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "a connection to the socket given up for the dump was left unanswered: {reply:?}"
        );
    }

    kill_and_reap(&mut app);
    kill(child);
    assert!(gone(child), "the stopped child {child} was not reaped");
    let (restored, stderr) = restart_fork(&sb, &[&format!("opal_snapshot_{pid}.ckpt")]);
    assert_eq!(restored, pid, "{stderr}");
    let state = proc_status(child, "State").unwrap_or_default();
    assert!(state.starts_with('T'), "the restored child is not stopped: {state:?}");
    kill(child);
    kill(restored);
}

#[test]
fn a_child_subreaper_is_checkpointed_and_stays_one() {
    require_criu!();
    let sb = Sandbox::new("state-subreaper");
    let exe = cc_without_library("child_subreaper.c", "child-subreaper", &[]);
    let mut command = sb.command(&exe);
    command.env("LD_PRELOAD", library()).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    assert!(wait_until(LONG, || sb.read("app.out").contains("ready")), "{}", sb.read("app.out"));
    // CRIU refused ("The criu itself is within dumped tree"): its detached helper was
    // handed to the subreaper when the intermediate child exited.
    checkpoint_ok(&sb, &["--timeout", "20", &pid.to_string()]);
    assert!(children(pid).is_empty(), "the checkpoint left children: {:?}", children(pid));
    kill_and_reap(&mut app);
    let (restored, stderr) = restart_fork(&sb, &[&format!("opal_snapshot_{pid}.ckpt")]);
    assert_eq!(restored, pid, "{stderr}");
    assert!(alive(pid), "the restored subreaper is gone: {stderr}");
    kill(restored);
}

//! Shared pieces of the integration tests: building the C test programs against the
//! library in this tree, a sandbox directory per test (its own HOME, no parameter
//! files of the machine), processes ended by PID, and the two tools.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn checkpoint_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opal-checkpoint"))
}

pub fn restart_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opal-restart"))
}

/// The directory with the `libopalcrs.so` that cargo built for these tests, with the
/// soname link the dynamic linker looks for.
pub fn lib_dir() -> PathBuf {
    let dir = checkpoint_tool().parent().unwrap().to_path_buf();
    let link = dir.join("libopalcrs.so.0");
    if !link.exists() {
        let _ = std::os::unix::fs::symlink("libopalcrs.so", &link);
    }
    assert!(dir.join("libopalcrs.so").exists(), "libopalcrs.so not built in {}", dir.display());
    dir
}

/// Programs built by this test binary, by output name.
static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Compiles `c-tests/<source>` (warnings are errors) against the tree's headers and
/// library, once per test binary.
pub fn cc(source: &str, output: &str, extra: &[&str]) -> PathBuf {
    let lib = lib_dir();
    let mut flags = vec![format!("-I{}", repo().join("include").display())];
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags.extend([
        format!("-L{}", lib.display()),
        "-lopalcrs".into(),
        "-Wl,--export-dynamic".into(),
        format!("-Wl,-rpath,{}", lib.display()),
    ]);
    compile(source, output, &flags)
}

/// Compiles `c-tests/<source>` as a program that knows nothing of the library.
pub fn cc_without_library(source: &str, output: &str, extra: &[&str]) -> PathBuf {
    compile(source, output, &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

/// Each program is compiled once per test binary, since tests running in parallel may
/// be executing (and checkpointing) it; the file appears by an atomic rename.
fn compile(source: &str, output: &str, flags: &[String]) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, exe)) = built.iter().find(|(name, _)| name == output) {
        return exe.clone();
    }
    let out_dir = lib_dir().join("c-tests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(output);
    let partial = out_dir.join(format!(".{output}.{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g", "-o"])
        .arg(&partial)
        .arg(repo().join("c-tests").join(source))
        .args(flags)
        .status()
        .expect("running cc");
    assert!(status.success(), "cc {source} failed");
    std::fs::rename(&partial, &exe).unwrap();
    built.push((output.to_string(), exe.clone()));
    exe
}

/// A private directory for one test, used as HOME; removed (with every process
/// started through it ended by PID) when dropped.
pub struct Sandbox {
    pub dir: PathBuf,
    children: Mutex<Vec<u32>>,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("opalcrs-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir, children: Mutex::new(Vec::new()) }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The environment every process of the test gets: HOME here, no parameter files.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("HOME", &self.dir)
            .env("OMPI_MCA_mca_base_param_files", "none")
            .env_remove("OMPI_MCA_crs")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        command
    }

    /// Starts a program in its own session, output appended to `<dir>/<name>.out`.
    pub fn spawn(&self, mut command: Command, name: &str) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.out")))
            .unwrap();
        command.stdout(out.try_clone().unwrap()).stderr(out);
        self.spawn_in_session(command).expect("spawning a test program")
    }

    /// Starts `command` as it is set up, in its own session, ended with the sandbox.
    pub fn spawn_in_session(&self, mut command: Command) -> std::io::Result<Child> {
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = command.spawn()?;
        self.children.lock().unwrap().push(child.id());
        Ok(child)
    }

    /// A copy of `program` in the sandbox under `name` (which another user may run: the
    /// build tree need not be open to other users). Copied by cp: a descriptor of ours
    /// open for writing, inherited by a child another test forks meanwhile, would keep
    /// the copy "busy" (ETXTBSY) when it is executed.
    pub fn copy_program(&self, program: &std::path::Path, name: &str) -> PathBuf {
        let copy = self.path(name);
        let copied = Command::new("cp").arg(program).arg(&copy).status().unwrap();
        assert!(copied.success(), "cp {} {}", program.display(), copy.display());
        copy
    }

    /// Remembers a PID that the test did not spawn itself (e.g. a restarted process).
    pub fn adopt(&self, pid: u32) {
        self.children.lock().unwrap().push(pid);
    }

    pub fn checkpoint(&self, args: &[&str]) -> Output {
        self.command(checkpoint_tool()).args(args).output().unwrap()
    }

    pub fn restart(&self, args: &[&str]) -> Output {
        self.command(restart_tool()).args(args).output().unwrap()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Only a process that still carries this sandbox's HOME (or a HOME inside it): a
        // PID the test already ended may belong to someone else by now.
        let home = format!("HOME={}", self.dir.display());
        let inside = format!("{home}/");
        for pid in self.children.lock().unwrap().drain(..) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ
                .split(|&b| b == 0)
                .any(|var| var == home.as_bytes() || var.starts_with(inside.as_bytes()))
            {
                kill(pid);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn kill(pid: u32) {
    // SAFETY: plain kill of a PID this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Polls `condition` every 20 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Kills a child and reaps it.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `Snapshot Path:` line of opal-checkpoint's output.
pub fn snapshot_path(output: &Output) -> PathBuf {
    let (stdout, stderr) = text(output);
    let line =
        stdout.lines().find_map(|l| l.strip_prefix("Snapshot Path: ")).unwrap_or_else(|| {
            panic!(
                "no snapshot path; status {:?}\nstdout: {stdout}\nstderr: {stderr}",
                output.status
            )
        });
    PathBuf::from(line)
}

/// The last `count N` of a selfapp log.
pub fn last_count(log: &str) -> Option<i64> {
    log.lines().rev().find_map(|l| l.strip_prefix("count ")).and_then(|n| n.parse().ok())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Why the criu tests cannot run here (not root, no CRIU >= 4), if they cannot.
pub fn criu_not_ready() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    match opalcrs::components::criu::binary::find(None) {
        Ok(found) if found.version.0 >= 4 => None,
        Ok(found) => Some(format!("{} is CRIU {:?}", found.path.display(), found.version)),
        Err(e) => Some(e.to_string()),
    }
}

/// Returns from the test, saying why, when the criu tests cannot run here.
#[macro_export]
macro_rules! require_criu {
    () => {
        if let Some(why) = common::criu_not_ready() {
            eprintln!("skipped: needs root and CRIU >= 4 ({why})");
            return;
        }
    };
}

/// Starts a self test program (c-tests/selfapp.c) with `args`, logging to `<sandbox>/log`,
/// waits until it counts, returns the child.
pub fn start(
    sb: &Sandbox,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let mut command = sb.command(program);
    command.arg(sb.path("log")).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = sb.spawn(command, "app");
    let ready = format!("init rc=0 pid={} ", child.id());
    assert!(
        wait_until(Duration::from_secs(10), || sb.read("log").contains(&ready)),
        "program did not start: {}",
        sb.read("app.out")
    );
    child
}

/// `opal-checkpoint ARGS` that must succeed; returns its stdout and the snapshot path.
pub fn checkpoint_ok(sb: &Sandbox, args: &[&str]) -> (String, PathBuf) {
    let out = sb.checkpoint(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "opal-checkpoint {args:?}: {:?}\n{stdout}{stderr}", out.status);
    (stdout, snapshot_path(&out))
}

/// SIGKILLs our child, reaps it and waits until its PID has left /proc.
pub fn kill_and_reap(child: &mut Child) {
    let pid = child.id();
    stop(child);
    let gone = wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "process {pid} still in /proc after SIGKILL and wait");
}

/// `opal-restart ARGS` with stdout and stderr in files (a restored process, or the
/// helpers of a new PID namespace, may hold them open); returns status, stdout, stderr.
pub fn run_restart(sb: &Sandbox, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let (out_file, err_file) = (sb.path("restart.stdout"), sb.path("restart.stderr"));
    let mut child = sb
        .command(restart_tool())
        .args(args)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
        stop(&mut child);
        panic!(
            "opal-restart {args:?} did not end: {}",
            std::fs::read_to_string(&err_file).unwrap_or_default()
        )
    });
    (
        status,
        std::fs::read_to_string(&out_file).unwrap(),
        std::fs::read_to_string(&err_file).unwrap(),
    )
}

/// `opal-restart --fork ARGS` that must succeed; returns the printed PID and stderr.
pub fn restart_fork(sb: &Sandbox, args: &[&str]) -> (u32, String) {
    let mut all = vec!["--fork"];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run_restart(sb, &all);
    assert!(status.success(), "opal-restart {all:?}: {status:?}\n{stdout}{stderr}");
    let pid = stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("--fork printed {stdout:?}; stderr {stderr}"));
    sb.adopt(pid);
    (pid, stderr)
}

/// The children of PID, from /proc (its threads' lists).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect()
}

/// PID and all its descendants, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(children(tree[next]));
        next += 1;
    }
    tree
}

/// Waits up to `limit` for a child to end.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of /proc/PID/status, e.g. "PPid" or "NSpid".
pub fn proc_status(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let prefix = format!("{field}:");
    status.lines().find_map(|line| line.strip_prefix(&prefix)).map(|value| value.trim().to_string())
}

/// A user that exists for one test: made by `useradd` (a group of its own, no home
/// created), removed with its group by `userdel` when dropped. None when not root or
/// when `useradd` is missing.
pub struct TempUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TempUser {
    pub fn create(tag: &str) -> Option<TempUser> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if !is_root() {
            return None;
        }
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("oct{tag}{}x{serial}", std::process::id());
        let made = Command::new("useradd")
            .args(["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"])
            .args(["--home-dir", "/nonexistent", &name])
            .status()
            .ok()?;
        assert!(made.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        Some(TempUser { uid: id("-u"), gid: id("-g"), name })
    }

    /// `program` run as this user (real and effective ids, its groups) in `sb`'s
    /// environment, with HOME set to `home`.
    pub fn command(
        &self,
        sb: &Sandbox,
        program: impl AsRef<std::ffi::OsStr>,
        home: &std::path::Path,
    ) -> Command {
        let mut command = sb.command("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(program)
            .current_dir(home)
            .env("HOME", home);
        command
    }

    /// A directory in `sb` that this user owns (mode 0700).
    pub fn home_in(&self, sb: &Sandbox) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let home = sb.path(&self.name);
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(self.uid), Some(self.gid)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        home
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // Any process still running as the user (the test failed half-way) would make
        // userdel refuse; only this test's processes have its uid.
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let uid = proc_status(pid, "Uid");
            if uid.and_then(|u| u.split_whitespace().next().map(str::to_string))
                == Some(self.uid.to_string())
            {
                kill(pid);
            }
        }
        let _ = wait_until(Duration::from_secs(5), || {
            Command::new("userdel").arg(&self.name).status().is_ok_and(|s| s.success())
        });
    }
}

//! Acting on a snapshot never gives it more privilege than its owner has: root restarts
//! another user's snapshot as that user, and nobody else may restart it at all. Run as
//! root against throw-away users the tests create and remove.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A flat (1.6/1.7 layout) snapshot `<home>/<name>` with `metadata`, owned by `user`
/// as if the user had written it.
fn forged_snapshot(user: &TempUser, home: &Path, name: &str, metadata: &str) -> PathBuf {
    let dir = home.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("snapshot_meta.data"), metadata).unwrap();
    for path in [&dir, &dir.join("snapshot_meta.data")] {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
    dir
}

/// The first line of `id -u` and the groups of `id -G` a command wrote.
fn ids(path: &Path) -> (u32, Vec<u32>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let uid = lines.next().unwrap().trim().parse().unwrap();
    let groups = lines.next().unwrap().split_whitespace().map(|g| g.parse().unwrap()).collect();
    (uid, groups)
}

#[test]
fn root_runs_what_a_users_snapshot_asks_for_as_that_user() {
    let Some(user) = TempUser::create("run") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("privilege-run");
    let home = user.home_in(&sb);
    let ids_file = home.join("ids");
    let touched = home.join("touched");
    let made = home.join("made/deeper");
    let snapshot = forged_snapshot(
        &user,
        &home,
        "evil.ckpt",
        &format!(
            "# PID: 1\n# OPAL CRS Component: self\n# MKDIR: {}\n# TOUCH: {}\n# CONTEXT: /bin/sh -c \"id -u > {}; id -G >> {}\"\n",
            made.display(),
            touched.display(),
            ids_file.display(),
            ids_file.display()
        ),
    );
    let (status, stdout, stderr) = run_restart(&sb, &[snapshot.to_str().unwrap()]);
    assert!(status.success(), "{status:?}\n{stdout}{stderr}");
    assert_eq!(ids(&ids_file), (user.uid, vec![user.gid]), "{stderr}");
    for created in [&touched, &made] {
        let owner = std::fs::metadata(created).unwrap().uid();
        assert_eq!(owner, user.uid, "{} made by uid {owner}", created.display());
    }

    // A record that points where only root may write fails the restart before the
    // command runs, and creates nothing.
    let closed = sb.path("root-only");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let second_ids = home.join("ids2");
    for record in ["MKDIR", "TOUCH"] {
        let target = closed.join(format!("by-{record}"));
        let snapshot = forged_snapshot(
            &user,
            &home,
            &format!("into-root-{record}.ckpt"),
            &format!(
                "# PID: 1\n# OPAL CRS Component: self\n# {record}: {}\n# CONTEXT: /bin/sh -c \"id -u > {}\"\n",
                target.display(),
                second_ids.display()
            ),
        );
        let (status, _, stderr) = run_restart(&sb, &[snapshot.to_str().unwrap()]);
        assert_eq!(status.code(), Some(126), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot create {}: Permission denied", target.display())),
            "{stderr}"
        );
        assert!(!target.exists() && !second_ids.exists(), "{record} was carried out as root");
    }

    // The recorded preload library is loaded as the user too.
    let library = home.join("report_euid.so");
    let euid_file = home.join("preload-euid");
    let source = sb.path("report_euid.c");
    std::fs::write(
        &source,
        format!(
            "#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void report(void) {{\n  FILE *f = fopen(\"{}\", \"w\");\n  if (f) {{ fprintf(f, \"%d\\n\", (int)geteuid()); fclose(f); }}\n}}\n",
            euid_file.display()
        ),
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .unwrap();
    assert!(built.success());
    let snapshot = forged_snapshot(
        &user,
        &home,
        "preload.ckpt",
        &format!(
            "# PID: 1\n# OPAL CRS Component: self\n# OPALCRS Preload: {}\n# CONTEXT: /bin/true\n",
            library.display()
        ),
    );
    let (status, _, stderr) = run_restart(&sb, &[snapshot.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    let euid = std::fs::read_to_string(&euid_file).unwrap();
    assert_eq!(euid.trim(), user.uid.to_string(), "the preload library ran with euid {euid}");
}

#[test]
fn an_honest_user_snapshot_restarts_as_its_user_through_both_tools() {
    let Some(user) = TempUser::create("honest") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("privilege-honest");
    let home = user.home_in(&sb);
    let program = sb.copy_program(&cc("selfapp.c", "selfapp", &[]), "selfapp");
    sb.copy_program(&lib_dir().join("libopalcrs.so"), "libopalcrs.so.0");
    let log = home.join("app.log");
    let mut command = user.command(&sb, &program, &home);
    command.arg(&log).env("LD_LIBRARY_PATH", &sb.dir);
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let counting = || std::fs::read_to_string(&log).unwrap_or_default().contains("count");
    assert!(wait_until(Duration::from_secs(10), counting), "{}", sb.read("app.out"));
    // Root's tool asks; the process writes its snapshot itself, as its user.
    let (_, path) =
        checkpoint_ok(&sb, &["-w", home.to_str().unwrap(), "-n", "s", &pid.to_string()]);
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), user.uid);
    kill_and_reap(&mut app);

    let series = home.join("s");
    let (restarted, _) = restart_fork(&sb, &[series.to_str().unwrap()]);
    let uids = proc_status(restarted, "Uid").unwrap();
    assert_eq!(uids, format!("{0}\t{0}\t{0}\t{0}", user.uid), "opal-restart ran it as {uids}");
    kill(restarted);

    // opal-run restarts the series too, as its user.
    let before = std::fs::read_to_string(&log).unwrap().len();
    let mut run = sb.command(PathBuf::from(env!("CARGO_BIN_EXE_opal-run")));
    run.env("LD_LIBRARY_PATH", &sb.dir)
        .args(["-w", home.to_str().unwrap(), "-n", "s", "--"])
        .arg(&program)
        .arg(&log);
    let mut job = sb.spawn(run, "run");
    let restarted_again =
        || std::fs::read_to_string(&log).unwrap_or_default()[before..].contains("restart");
    assert!(wait_until(Duration::from_secs(10), restarted_again), "{}", sb.read("run.out"));
    let uids = proc_status(job.id(), "Uid").unwrap();
    assert_eq!(uids, format!("{0}\t{0}\t{0}\t{0}", user.uid), "opal-run ran it as {uids}");
    stop(&mut job);
}

#[test]
fn nobody_but_its_owner_and_root_restarts_a_snapshot() {
    let Some(user) = TempUser::create("other") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("privilege-other");
    let home = user.home_in(&sb);
    let marker = sb.path("ran");
    let roots = sb.path("roots.ckpt");
    std::fs::create_dir(&roots).unwrap();
    std::fs::write(
        roots.join("snapshot_meta.data"),
        format!(
            "# PID: 1\n# OPAL CRS Component: self\n# CONTEXT: /bin/touch {}\n",
            marker.display()
        ),
    )
    .unwrap();
    let tool = sb.copy_program(&restart_tool(), "opal-restart");
    let out = user.command(&sb, &tool, &home).arg(&roots).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stdout}{stderr}");
    let expected = format!(
        "refusing snapshot {}: it belongs to uid 0; only that user or root may restart it",
        roots.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!marker.exists());
}

/// Protobuf varint of `n`.
fn varint(mut n: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    while n >= 0x80 {
        bytes.push((n as u8) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    bytes
}

/// The creds of a CRIU `core-<pid>.img`: where they start in `bytes` and the varints of
/// the user's uid and gid they hold, as `uid = 1, gid = 2, euid = 3, egid = 4, suid = 5,
/// sgid = 6, fsuid = 7, fsgid = 8` (CRIU images/creds.proto), then `cap_inh = 9`.
fn find_creds(bytes: &[u8], uid: u32, gid: u32) -> (usize, Vec<u8>, Vec<u8>, usize) {
    let (u, g) = (varint(uid), varint(gid));
    let mut needle = Vec::new();
    for field in 1..=8u8 {
        needle.push(field << 3);
        needle.extend(if field % 2 == 1 { &u } else { &g });
    }
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("creds in the image");
    (at, u, g, at + needle.len())
}

/// Rewrites uid, euid, suid and fsuid of the creds in `core` from `uid` to 0, keeping
/// every length: 0 is written as a varint as long as `uid`'s.
fn forge_root_creds(core: &Path, uid: u32, gid: u32) {
    let mut bytes = std::fs::read(core).unwrap();
    let (mut offset, u, g, _) = find_creds(&bytes, uid, gid);
    let mut zero = vec![0x80; u.len()];
    *zero.last_mut().unwrap() = 0;
    for field in 1..=8u8 {
        offset += 1;
        let len = if field % 2 == 1 { u.len() } else { g.len() };
        if field % 2 == 1 {
            bytes[offset..offset + len].copy_from_slice(&zero);
        }
        offset += len;
    }
    std::fs::write(core, bytes).unwrap();
}

/// Gives the task of `core` the inheritable capability CAP_CHOWN (its first `cap_inh`
/// word from 0 to 1, one byte either way).
fn forge_inheritable_capability(core: &Path, uid: u32, gid: u32) {
    let mut bytes = std::fs::read(core).unwrap();
    let (_, _, _, after) = find_creds(&bytes, uid, gid);
    assert_eq!(bytes[after..after + 2], [9 << 3, 0], "cap_inh follows fsgid");
    bytes[after + 1] = 1;
    std::fs::write(core, bytes).unwrap();
}

/// Makes the manifest of `snapshot` agree with its `file` as it is now.
fn make_manifest_agree(snapshot: &Path, file: &Path) {
    let mut manifest = opalcrs::snapshot::Manifest::read(snapshot).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let entry = manifest.files.iter_mut().find(|f| f.path == name).unwrap();
    (entry.size, entry.hash) = opalcrs::snapshot::hash_file(file).unwrap();
    manifest.write_to(snapshot).unwrap();
}

/// A counter of a throw-away user dumped by root's tool into the user's snapshot, and
/// killed: the user, the sandbox, the snapshot and the PID.
fn dumped_user_counter(tag: &str) -> Option<(TempUser, Sandbox, PathBuf, u32)> {
    let user = TempUser::create(tag)?;
    let sb = Sandbox::new(&format!("privilege-{tag}"));
    let home = user.home_in(&sb);
    let program = sb.copy_program(&cc("plain_counter.c", "plain_counter", &[]), "plain_counter");
    sb.copy_program(&lib_dir().join("libopalcrs.so"), "libopalcrs.so.0");
    let count = home.join("count");
    // Its output is the user's, so that only the image stands in the way of a restore.
    let out = sb.path("app.out");
    std::fs::write(&out, "").unwrap();
    std::os::unix::fs::chown(&out, Some(user.uid), Some(user.gid)).unwrap();
    let mut command = user.command(&sb, &program, &home);
    command
        .arg(&count)
        .arg("1")
        .env("OMPI_MCA_crs", "criu")
        .env("LD_LIBRARY_PATH", &sb.dir)
        .env("TMPDIR", &home);
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let lines = || std::fs::read_to_string(&count).unwrap_or_default().lines().count();
    assert!(wait_until(Duration::from_secs(10), || lines() >= 2), "{}", sb.read("app.out"));
    let (_, snapshot) = checkpoint_ok(&sb, &["--timeout", "30", &pid.to_string()]);
    assert_eq!(std::fs::metadata(&snapshot).unwrap().uid(), user.uid);
    kill_and_reap(&mut app);
    Some((user, sb, snapshot, pid))
}

#[test]
fn a_users_criu_image_rewritten_to_uid_0_never_restores_as_root() {
    require_criu!();
    let Some((user, sb, snapshot, pid)) = dumped_user_counter("criu") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let series = snapshot.parent().unwrap().to_str().unwrap();

    // As it is, it comes back as its user, with the user's groups and no capability.
    let (restored, stderr) = restart_fork(&sb, &[series]);
    let status = |field: &str| proc_status(restored, field).unwrap_or_default();
    let (uids, groups, caps) = (status("Uid"), status("Groups"), status("CapEff"));
    kill(restored);
    assert_eq!(restored, pid, "{stderr}");
    assert_eq!(uids, format!("{0}\t{0}\t{0}\t{0}", user.uid), "restored as {uids}");
    assert_eq!(groups, user.gid.to_string());
    assert_eq!(caps, "0000000000000000");
    assert!(wait_until(Duration::from_secs(10), || !alive(restored)));

    // The user rewrites the image's uid to 0 and makes the manifest agree, so that the
    // integrity check passes and only the privilege rule stands in the way; then root
    // restores into a new PID namespace too.
    let core = snapshot.join(format!("core-{pid}.img"));
    forge_root_creds(&core, user.uid, user.gid);
    make_manifest_agree(&snapshot, &core);
    let rounds: [(&str, &[&str]); 2] =
        [("manifest rewritten", &[]), ("new PID namespace", &["-mca", "crs_criu_pidns", "always"])];
    for (round, options) in rounds {
        let mut args = vec!["--fork"];
        args.extend_from_slice(options);
        args.push(series);
        let (status, stdout, stderr) = run_restart(&sb, &args);
        if status.success() {
            let restored: u32 = stdout.trim().parse().unwrap();
            sb.adopt(restored);
            let uids = proc_status(restored, "Uid").unwrap_or_default();
            kill(restored);
            assert_eq!(
                uids,
                format!("{0}\t{0}\t{0}\t{0}", user.uid),
                "{round}: restored as {uids}\n{stderr}"
            );
        } else {
            eprintln!("{round}: refused: {stderr}");
            assert_eq!(status.code(), Some(126), "{round}: {stderr}");
            assert!(stderr.contains("Unable to set real, effective and saved user ID"), "{stderr}");
        }
    }
    // Deleting the manifest (which once turned every check off) makes it corrupt.
    std::fs::remove_file(snapshot.join(opalcrs::snapshot::MANIFEST_FILE)).unwrap();
    let (status, _, stderr) = run_restart(&sb, &["--fork", series]);
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("opalcrs_manifest.json: missing"), "{stderr}");
}

#[test]
fn a_users_criu_image_that_asks_for_a_capability_is_killed_before_it_runs() {
    require_criu!();
    let Some((user, sb, snapshot, pid)) = dumped_user_counter("caps") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let count = sb.path(&user.name).join("count");
    let core = snapshot.join(format!("core-{pid}.img"));
    forge_inheritable_capability(&core, user.uid, user.gid);
    make_manifest_agree(&snapshot, &core);
    let before = std::fs::read_to_string(&count).unwrap();
    let series = snapshot.parent().unwrap().to_str().unwrap();
    let (status, stdout, stderr) = run_restart(&sb, &["--fork", series]);
    if let Ok(restored) = stdout.trim().parse::<u32>() {
        sb.adopt(restored);
        let caps = proc_status(restored, "CapInh").unwrap_or_default();
        kill(restored);
        panic!("restored with inheritable capabilities {caps}: {status:?}\n{stderr}");
    }
    assert_eq!(status.code(), Some(126), "{stderr}");
    let expected = format!("restored process {pid} holds capabilities (CapInh: 0000000000000001)");
    assert!(stderr.contains(&expected), "{stderr}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&count).unwrap(), before, "the refused process ran");
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)), "process {pid} left");
}

/// What the control socket `name` answers a status request sent by a process running as
/// `uid`/`gid`: the reply's first line, or why there was none. The forked child makes
/// system calls only (the test harness is multi-threaded).
fn status_reply_as(uid: u32, gid: u32, name: &str) -> String {
    let request = b"{\"v\":1,\"op\":\"status\"}\n";
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Abstract name: a NUL first, no NUL at the end.
    for (slot, byte) in address.sun_path[1..].iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    let length = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
    let mut pipe = [0; 2];
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes system calls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let groups = [gid];
            if libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(2);
            }
            let socket = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(socket, std::ptr::addr_of!(address).cast(), length) != 0 {
                libc::_exit(3);
            }
            libc::write(socket, request.as_ptr().cast(), request.len());
            let mut reply = [0u8; 4096];
            let mut got = 0usize;
            loop {
                let n = libc::read(socket, reply[got..].as_mut_ptr().cast(), reply.len() - got);
                if n <= 0 {
                    break;
                }
                got += n as usize;
                if reply[..got].contains(&b'\n') || got == reply.len() {
                    break;
                }
            }
            libc::write(pipe[1], reply.as_ptr().cast(), got);
            libc::_exit(0);
        }
    }
    unsafe { libc::close(pipe[1]) };
    let mut reply = Vec::new();
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    std::io::Read::read_to_end(&mut file, &mut reply).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => String::from_utf8_lossy(&reply).lines().next().unwrap_or("").to_string(),
        code => format!("no reply (child step {code} failed)"),
    }
}

/// What root's `program`, started in a user namespace of its own without a uid map (it
/// sees itself, and every user it cannot map, as the overflow uid 65534), answers a
/// throw-away user's status request on its control socket.
fn served_in_a_user_namespace(tag: &str, program: &[std::ffi::OsString]) -> Option<String> {
    let Some(user) = TempUser::create(tag) else {
        eprintln!("skipped: needs root and useradd");
        return None;
    };
    let sb = Sandbox::new(&format!("privilege-{tag}"));
    let mut command = sb.command("unshare");
    command.args(["--user", "env"]).args(program);
    let mut app = sb.spawn(command, "app");
    let pid = app.id() as i32;
    let mut endpoint = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            endpoint = opalcrs::control::locate(pid).ok();
            endpoint.is_some()
        }),
        "the program in its user namespace never opened its control socket: {}",
        sb.read("app.err")
    );
    let reply = status_reply_as(user.uid, user.gid, &endpoint.unwrap().name);
    kill_and_reap(&mut app);
    Some(reply)
}

#[test]
fn a_process_in_a_user_namespace_serves_no_user_it_cannot_tell_apart() {
    let preload = format!("LD_PRELOAD={}", lib_dir().join("libopalcrs.so").display());
    let Some(reply) =
        served_in_a_user_namespace("userns", &[preload.into(), "sleep".into(), "60".into()])
    else {
        return;
    };
    assert!(
        reply.contains("permission") && !reply.contains("\"status\""),
        "another user was served by root's process in a user namespace: {reply}"
    );
}

#[test]
fn a_job_launcher_in_a_user_namespace_serves_no_user_it_cannot_tell_apart() {
    let launcher = lib_dir().join("opal-run").into_os_string();
    let job = [launcher, "-np".into(), "2".into(), "sleep".into(), "60".into()];
    let Some(reply) = served_in_a_user_namespace("usernsjob", &job) else { return };
    assert!(
        reply.contains("permission") && !reply.contains("\"status\""),
        "another user was served by root's job launcher in a user namespace: {reply}"
    );
}

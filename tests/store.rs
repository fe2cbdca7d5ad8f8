//! The snapshot store as root against another user (issue 12, finding 3): a root
//! checkpoint writes into no directory another user owns or can swap, and says why.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn selfapp() -> std::path::PathBuf {
    cc("selfapp.c", "selfapp", &[])
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// opal-checkpoint of `pid` that must be refused because of `path`, owned by `user`;
/// the process is left running and can still be checkpointed into its own directory.
fn assert_refused(sb: &Sandbox, app: &mut std::process::Child, path: &Path, user: &TempUser) {
    let pid = app.id().to_string();
    let out = sb.checkpoint(&[&pid]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stderr.contains("refusing series"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is owned by uid {}", path.display(), user.uid))
            || stderr.contains(&format!("it is owned by uid {}", user.uid)),
        "{stderr}"
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(alive(app.id()), "the process died: {}", sb.read("app.out"));
    let mine = sb.path("mine");
    let (_, snapshot) = checkpoint_ok(sb, &["-w", mine.to_str().unwrap(), &pid]);
    assert!(snapshot.starts_with(&mine), "{}", snapshot.display());
}

#[test]
fn root_refuses_a_series_another_user_planted_in_a_shared_directory() {
    let Some(attacker) = TempUser::create("plant") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("store-planted");
    // As /tmp: root's, writable by everyone, sticky.
    let shared = sb.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut app = start(
        &sb,
        &selfapp(),
        &[],
        &[("OMPI_MCA_crs_base_snapshot_dir", shared.to_str().unwrap())],
    );
    let series = shared.join(format!("opal_snapshot_{}.ckpt", app.id()));
    let home = attacker.home_in(&sb);
    let planted =
        attacker.command(&sb, "mkdir", &home).arg("-m0755").arg(&series).status().unwrap();
    assert!(planted.success());
    assert_refused(&sb, &mut app, &series, &attacker);
    assert!(entries(&series).is_empty(), "written into the planted series: {:?}", entries(&series));
    stop(&mut app);
}

#[test]
fn root_refuses_a_base_directory_another_user_owns() {
    let Some(attacker) = TempUser::create("base") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("store-base");
    let base = attacker.home_in(&sb);
    let mut app =
        start(&sb, &selfapp(), &[], &[("OMPI_MCA_crs_base_snapshot_dir", base.to_str().unwrap())]);
    assert_refused(&sb, &mut app, &base, &attacker);
    assert!(entries(&base).is_empty(), "written into their directory: {:?}", entries(&base));
    stop(&mut app);
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn a_process_restored_with_its_writers_pid_removes_what_that_writer_left() {
    require_criu!();
    let sb = Sandbox::new("store-stale");
    let mut app = start(&sb, &selfapp(), &[], &[("OMPI_MCA_crs", "criu")]);
    let pid = app.id();
    // With criu the control socket opens once the component is checked.
    let counting = || last_count(&sb.read("log")).unwrap_or(0) >= 2;
    assert!(wait_until(std::time::Duration::from_secs(10), counting), "{}", sb.read("app.out"));
    let (_, first) = checkpoint_ok(&sb, &[&pid.to_string()]);
    let series = first.parent().unwrap().to_path_buf();
    // What the process leaves when it is killed while writing its next snapshot.
    let left = series.join(format!(".tmp-1-{pid}-{}-00ff", start_time(pid)));
    std::fs::create_dir(&left).unwrap();
    std::fs::write(left.join("pages-1.img"), vec![0u8; 4096]).unwrap();
    kill_and_reap(&mut app);
    let (restored, _) = restart_fork(&sb, &[series.to_str().unwrap()]);
    let inner_pid = proc_status(restored, "NSpid").unwrap();
    assert!(inner_pid.ends_with(&pid.to_string()), "restored as {inner_pid}, not {pid}");
    let (_, next) = checkpoint_ok(&sb, &[&restored.to_string()]);
    assert_eq!(next, series.join("1"));
    assert!(!left.exists(), "{} is still there", left.display());
    kill(restored);
}

#[test]
fn a_temporary_swapped_for_a_link_during_the_callback_fails_the_checkpoint() {
    let sb = Sandbox::new("store-swap");
    let victim = sb.path("victim");
    std::fs::create_dir(&victim).unwrap();
    let mut app = start(&sb, &selfapp(), &["--slow", "600"], &[]);
    let pid = app.id().to_string();
    let series = sb.path(&format!("opal_snapshot_{pid}.ckpt"));
    let tool = sb.spawn(
        {
            let mut command = sb.command(checkpoint_tool());
            command.arg(&pid);
            command
        },
        "tool",
    );
    // While the callback sleeps: the temporary moved aside, a link to the victim in its place.
    let temporary = || {
        std::fs::read_dir(&series)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|path| path.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
    };
    assert!(wait_until(std::time::Duration::from_secs(5), || temporary().is_some()));
    let swapped = temporary().unwrap();
    std::fs::rename(&swapped, sb.path("aside")).unwrap();
    std::os::unix::fs::symlink(&victim, &swapped).unwrap();
    let mut tool = tool;
    let status = wait_exit(&mut tool, std::time::Duration::from_secs(10)).unwrap();
    let output = sb.read("tool.out");
    assert_eq!(status.code(), Some(6), "{output}");
    assert!(output.contains("was replaced"), "{output}");
    // The callback writes its state by path, through the link; the store wrote nothing
    // there and published nothing.
    let written = entries(&victim);
    assert!(
        written.iter().all(|name| name == "state"),
        "the store wrote into the victim: {written:?}"
    );
    assert!(std::fs::symlink_metadata(series.join("0")).is_err(), "{:?}", entries(&series));
    assert!(
        std::fs::symlink_metadata(&swapped).is_err(),
        "the link was left: {:?}",
        entries(&series)
    );
    assert!(wait_until(std::time::Duration::from_secs(5), || sb
        .read("log")
        .contains("continue default")));
    stop(&mut app);
}

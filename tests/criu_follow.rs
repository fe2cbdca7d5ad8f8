//! The image follower (issue 15): a helper process hashes the page images while CRIU
//! writes them, and the manifest is still the XXH3-128 of every byte of every file.
//! Real CRIU dumps of a real C program (c-tests/plain_counter.c); every test needs root
//! and CRIU >= 4, and without them says why on stderr and passes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

fn plain_counter() -> PathBuf {
    cc("plain_counter.c", "plain_counter", &[])
}

/// plain_counter with `mib` MiB, criu selected, the follower on (unless `env` says
/// otherwise), logging its debug lines into app.out.
fn start_counter(sb: &Sandbox, mib: u32, env: &[(&str, &str)]) -> Child {
    let mut command = sb.command(plain_counter());
    command
        .arg(sb.path("count"))
        .arg(mib.to_string())
        .env("OMPI_MCA_crs", "criu")
        .env("OMPI_MCA_crs_criu_follow_images", "1")
        .env("OMPI_MCA_crs_base_verbose", "10");
    for (name, value) in env {
        command.env(name, value);
    }
    let child = sb.spawn(command, "app");
    let started = wait_until(Duration::from_secs(15), || sb.read("count").lines().count() >= 2);
    assert!(started, "plain_counter did not start: {}", sb.read("app.out"));
    child
}

/// Every file the manifest lists, hashed afresh here, against what it says; and no
/// file of the snapshot is left out but the manifest itself.
fn assert_manifest_is_a_full_rehash(snapshot: &Path) {
    let text = std::fs::read_to_string(snapshot.join("opalcrs_manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let mut listed: Vec<String> = Vec::new();
    for file in files {
        let name = file["path"].as_str().unwrap();
        let bytes = std::fs::read(snapshot.join(name)).unwrap();
        let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
        assert_eq!(file["hash"].as_str(), Some(hash.as_str()), "{name}");
        assert_eq!(file["size"].as_u64(), Some(bytes.len() as u64), "{name}");
        listed.push(name.to_string());
    }
    let mut present: Vec<String> = std::fs::read_dir(snapshot)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "opalcrs_manifest.json")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present, "the manifest lists exactly the files of the snapshot");
    assert!(listed.iter().any(|name| name.starts_with("pages-")), "{listed:?}");
}

fn verify(sb: &Sandbox, snapshot: &Path) {
    let out = sb.restart(&["--verify", &snapshot.display().to_string()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "opal-restart --verify: {stdout}{stderr}");
}

#[test]
fn the_follower_hashes_the_page_images_and_the_manifest_equals_a_full_rehash() {
    require_criu!();
    let sb = Sandbox::new("follow-rehash");
    let mut app = start_counter(&sb, 64, &[]);
    let pid = app.id().to_string();
    for round in 0..2 {
        let (_, snapshot) = checkpoint_ok(&sb, &[&pid]);
        let log = sb.read("app.out");
        assert_eq!(
            log.matches("image follower hashed 1 page images while CRIU wrote them").count(),
            round + 1,
            "{log}"
        );
        assert_eq!(
            log.matches("crs: publish: 1 files hashed while they were written").count(),
            round + 1,
            "{log}"
        );
        assert_manifest_is_a_full_rehash(&snapshot);
        verify(&sb, &snapshot);
    }
    kill_and_reap(&mut app);
}

#[test]
fn with_the_follower_off_or_for_a_small_process_every_file_is_hashed_after_the_dump() {
    require_criu!();
    for (tag, mib, follow) in [("off", "64", "0"), ("small", "4", "1")] {
        let sb = Sandbox::new(&format!("follow-{tag}"));
        let mut app = start_counter(
            &sb,
            mib.parse().unwrap(),
            &[("OMPI_MCA_crs_criu_follow_images", follow)],
        );
        let (_, snapshot) = checkpoint_ok(&sb, &[&app.id().to_string()]);
        let log = sb.read("app.out");
        assert!(!log.contains("image follower"), "{tag}: {log}");
        assert!(!log.contains("hashed while they were written"), "{tag}: {log}");
        assert_manifest_is_a_full_rehash(&snapshot);
        verify(&sb, &snapshot);
        kill_and_reap(&mut app);
    }
}

/// PIDs of processes whose command line is the follower's for process `pid`.
fn followers_of(pid: u32) -> Vec<u32> {
    let wanted = "\0--follow-images\0";
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            std::fs::read(format!("/proc/{candidate}/cmdline")).is_ok_and(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
                cmdline.contains(wanted) && cmdline.ends_with(&format!("\0{pid}\0"))
            })
        })
        .collect()
}

#[test]
fn a_follower_killed_during_the_dump_leaves_a_good_snapshot_hashed_after() {
    require_criu!();
    let sb = Sandbox::new("follow-killed");
    // Large enough that the dump lasts long after the follower has started.
    let mut app = start_counter(&sb, 384, &[]);
    let pid = app.id();
    let killed = std::thread::scope(|scope| {
        let hunter = scope.spawn(|| {
            let mut killed = None;
            let found = wait_until(Duration::from_secs(20), || {
                for follower in followers_of(pid) {
                    // SAFETY: a plain kill of the follower found by its command line.
                    unsafe { libc::kill(follower as i32, libc::SIGKILL) };
                    killed = Some(follower);
                }
                killed.is_some()
            });
            found.then_some(killed).flatten()
        });
        let checkpoint = checkpoint_ok(&sb, &[&pid.to_string()]);
        (hunter.join().unwrap(), checkpoint)
    });
    let (killed, (_, snapshot)) = killed;
    assert!(killed.is_some(), "no follower was seen");
    let log = sb.read("app.out");
    assert!(
        log.contains("it ended without its records; the images are hashed after the dump"),
        "{log}"
    );
    assert!(!log.contains("hashed while they were written"), "{log}");
    assert!(!snapshot.join(".opalcrs-prehashed").exists());
    assert_manifest_is_a_full_rehash(&snapshot);
    verify(&sb, &snapshot);
    kill_and_reap(&mut app);
}

/// Root's opal-checkpoint dumping a user's process on its behalf starts the follower
/// itself, as that user; the process can read the records file the tool hands over,
/// and the manifest is still a full re-hash.
#[test]
fn roots_tool_dumping_for_a_user_hashes_while_criu_writes() {
    require_criu!();
    let Some(user) = TempUser::create("follow") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    let sb = Sandbox::new("follow-behalf");
    let home = user.home_in(&sb);
    let program = sb.copy_program(&plain_counter(), "plain_counter");
    sb.copy_program(&lib_dir().join("libopalcrs.so"), "libopalcrs.so.0");
    let count = home.join("count");
    // Its output is the user's.
    std::fs::write(sb.path("app.out"), "").unwrap();
    std::os::unix::fs::chown(sb.path("app.out"), Some(user.uid), Some(user.gid)).unwrap();
    let mut command = user.command(&sb, &program, &home);
    command
        .arg(&count)
        .arg("64")
        .env("OMPI_MCA_crs", "criu")
        .env("OMPI_MCA_crs_criu_follow_images", "1")
        .env("OMPI_MCA_crs_base_verbose", "10")
        .env("LD_LIBRARY_PATH", &sb.dir)
        .env("TMPDIR", &home);
    let mut app = sb.spawn(command, "app");
    let started = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&count).unwrap_or_default().lines().count() >= 2
    });
    assert!(started, "{}", sb.read("app.out"));
    let out = sb
        .command(checkpoint_tool())
        .args(["--timeout", "60", &app.id().to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    // The records came from the tool's thread: the process ran no follower.
    let log = sb.read("app.out");
    assert!(!log.contains("image follower"), "{log}");
    assert!(log.contains("crs: publish: 1 files hashed while they were written"), "{log}");
    let snapshot = snapshot_path(&out);
    assert_manifest_is_a_full_rehash(&snapshot);
    verify(&sb, &snapshot);
    kill_and_reap(&mut app);
}

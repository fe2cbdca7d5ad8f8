//! The life of a series end to end, with real C programs and the two tools: listing
//! and verifying snapshots, restarting past damaged ones, retention, periodic
//! checkpoints, and crash safety when the program or the tool is killed at a random
//! point of a checkpoint.

mod common;
use common::*;
use opalcrs::snapshot::{verify, Manifest, Series, Verdict};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(10);

fn selfapp() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| cc("selfapp.c", "selfapp-lifecycle", &[])).clone()
}

/// A program this test started; killed and reaped when dropped.
struct App {
    child: Child,
}

impl App {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn arg(&self) -> String {
        self.child.id().to_string()
    }

    /// SIGKILL, then reap, so that its PID is gone from the system.
    fn kill(mut self) {
        stop(&mut self.child);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A restarted program (a child of the `opal-restart --fork` that has exited); killed
/// when dropped.
struct Restarted(u32);

impl Drop for Restarted {
    fn drop(&mut self) {
        kill(self.0);
        wait_for(LONG, || !alive(self.0));
    }
}

/// Polls `condition` every 2 ms for up to `limit`.
fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    condition()
}

/// The part of a log written since `offset`.
fn read_from(path: &Path, offset: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default()).into_owned()
}

fn log_len(path: &Path) -> usize {
    fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// Starts selfapp logging to `<sandbox>/<log>` in its own session and waits until it
/// has called opal_init.
fn start(sb: &Sandbox, log: &str, args: &[&str], env: &[(&str, &str)]) -> App {
    let log_path = sb.path(log);
    let from = log_len(&log_path);
    let mut command = sb.command(selfapp());
    command.arg(&log_path).args(args).envs(env.iter().copied());
    let app = App { child: sb.spawn(command, log) };
    let ready = format!("init rc=0 pid={} ", app.pid());
    assert!(
        wait_for(LONG, || read_from(&log_path, from).contains(&ready)),
        "selfapp did not start: {}",
        sb.read(&format!("{log}.out"))
    );
    app
}

/// The published snapshots of a series; none while the series does not exist yet.
fn seqs(series: &Path) -> Vec<u64> {
    if !series.exists() {
        return Vec::new();
    }
    Series::at(series).snapshots().unwrap()
}

/// The names in a directory, sorted; none while it does not exist yet.
fn entries(dir: &Path) -> Vec<String> {
    let Ok(listing) = fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        listing.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", text(output)))
}

/// The table row of `seq` in a `--list` text: its whitespace-separated columns.
fn row(listing: &str, seq: &str) -> Vec<String> {
    listing
        .lines()
        .map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(seq) && cols.len() >= 5)
        .unwrap_or_else(|| panic!("no row for {seq} in:\n{listing}"))
}

/// Size of the regular files in a directory tree.
fn tree_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                tree_size(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn saved_value(snapshot: &Path) -> i64 {
    fs::read_to_string(snapshot.join("state")).unwrap().trim().parse().unwrap()
}

/// Waits for the restarted program's restart callback and checks it loaded `snapshot`.
fn assert_restarted_from(sb: &Sandbox, log: &str, from: usize, snapshot: &Path) {
    let expected = format!(
        "restart default in_init=1 value={} env_dir={}",
        saved_value(snapshot),
        snapshot.display()
    );
    assert!(
        wait_for(LONG, || read_from(&sb.path(log), from).contains(&expected)),
        "no `{expected}` in the log:\n{}",
        read_from(&sb.path(log), from)
    );
}

/// A series `job` of three good snapshots of one selfapp (which has ended); returns its path.
fn three_good_snapshots(sb: &Sandbox) -> PathBuf {
    let app = start(sb, "log", &[], &[("OMPI_MCA_crs_base_snapshot_name", "job")]);
    let series = sb.path("job");
    for seq in 0..3 {
        // Distinct counter values, so a restart shows which snapshot it loaded.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(checkpoint_ok(sb, &[&app.arg()]).1, series.join(seq.to_string()));
    }
    app.kill();
    let values: BTreeSet<i64> =
        (0..3).map(|seq| saved_value(&series.join(seq.to_string()))).collect();
    assert_eq!(values.len(), 3, "the counter did not move between checkpoints");
    series
}

#[test]
fn list_and_verify_report_every_state() {
    let sb = Sandbox::new("lifecycle-list");
    let series = three_good_snapshots(&sb);
    // 3: an empty numbered directory (incomplete); 4: metadata and state without a
    // manifest, as 1.6/1.7 wrote a snapshot: numbered, it is corrupt all the same.
    fs::create_dir(series.join("3")).unwrap();
    fs::create_dir(series.join("4")).unwrap();
    fs::copy(series.join("2/snapshot_meta.data"), series.join("4/snapshot_meta.data")).unwrap();
    fs::copy(series.join("2/state"), series.join("4/state")).unwrap();
    // A flat 1.6 snapshot and a directory that is no series, beside the series.
    let flat = sb.path("opal_snapshot_77.ckpt");
    fs::create_dir(&flat).unwrap();
    fs::write(flat.join("snapshot_meta.data"), "# PID: 77\n# Component: self\n# CONTEXT: true\n")
        .unwrap();
    fs::create_dir_all(sb.path("notes/7")).unwrap();

    // --list of one series, as text.
    let out = sb.restart(&["--list", "job"]);
    let (listing, stderr) = text(&out);
    assert!(out.status.success(), "{listing}{stderr}");
    assert!(listing.starts_with("Snapshot Ref.: job\t[0, 1, 2, 3, 4]\n"), "{listing}");
    assert!(listing.contains(&format!("\nPath: {}\n", series.display())), "{listing}");
    for seq in 0..3 {
        let dir = series.join(seq.to_string());
        let manifest = Manifest::read(&dir).unwrap();
        let expected = [
            seq.to_string(),
            manifest.created,
            "self".into(),
            tree_size(&dir).to_string(),
            "good".into(),
        ];
        assert_eq!(row(&listing, &seq.to_string()), expected, "{listing}");
    }
    let incomplete = row(&listing, "3");
    assert_eq!(incomplete[..5], ["3", "-", "-", "0", "incomplete:"], "{listing}");
    let unlisted = row(&listing, "4");
    assert_eq!(
        unlisted[..7],
        [
            "4".to_string(),
            "-".into(),
            "self".into(),
            tree_size(&series.join("4")).to_string(),
            "corrupt:".into(),
            "opalcrs_manifest.json:".into(),
            "missing".into()
        ]
    );

    // The same as JSON.
    let value = json(&sb.restart(&["--list", "--json", series.to_str().unwrap()]));
    assert_eq!(value["version"], 1);
    let listed = value["series"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["path"], series.display().to_string());
    let snapshots = listed[0]["snapshots"].as_array().unwrap();
    let states: Vec<(u64, &str)> = snapshots
        .iter()
        .map(|s| (s["seq"].as_u64().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(0, "good"), (1, "good"), (2, "good"), (3, "incomplete"), (4, "corrupt")]);
    let first = &snapshots[0];
    assert_eq!(first["created"], Manifest::read(&series.join("0")).unwrap().created);
    assert_eq!(first["component"], "self");
    assert_eq!(first["size"], tree_size(&series.join("0")));
    assert_eq!(first["detail"], Value::Null);
    assert_eq!(first["path"], series.join("0").display().to_string());
    assert_eq!(snapshots[3]["created"], Value::Null);
    assert_eq!(snapshots[4]["file"], "opalcrs_manifest.json", "{value}");

    // opal-checkpoint -l without a series: everything in crs_base_snapshot_dir ($HOME here).
    let out = sb.checkpoint(&["--list"]);
    let (all, stderr) = text(&out);
    assert!(out.status.success(), "{all}{stderr}");
    assert!(all.contains("Snapshot Ref.: job\t[0, 1, 2, 3, 4]\n"), "{all}");
    assert!(all.contains("Snapshot Ref.: opal_snapshot_77.ckpt\t(1.6/1.7 layout)\n"), "{all}");
    assert!(!all.contains("notes"), "{all}");
    let value = json(&sb.checkpoint(&["-l", "--json", "-w", sb.dir.to_str().unwrap()]));
    let paths: Vec<(&str, &str)> = value["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["path"].as_str().unwrap(), s["layout"].as_str().unwrap()))
        .collect();
    let expected = [(series.to_str().unwrap(), "series"), (flat.to_str().unwrap(), "flat")];
    assert_eq!(paths, expected);
    assert_eq!(value["series"][1]["snapshots"][0]["state"], "legacy");
    assert!(
        value["series"][1]["snapshots"][0]["detail"].as_str().unwrap().contains("unchecked"),
        "{value}"
    );
    assert_eq!(value["series"][1]["snapshots"][0]["seq"], Value::Null);
    // opal-restart --list -w DIR says the same.
    let (again, _) = text(&sb.restart(&["--list", "-w", sb.dir.to_str().unwrap()]));
    assert_eq!(again, all);
    let empty = sb.path("empty-base");
    fs::create_dir(&empty).unwrap();
    let out = sb.checkpoint(&["--list", "-w", empty.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty(), "{:?}", text(&out));
    assert!(text(&out).1.contains("No snapshot series in"), "{:?}", text(&out));
    assert_eq!(
        sb.checkpoint(&["--list", "-w", sb.path("missing").to_str().unwrap()]).status.code(),
        Some(1)
    );
    assert_eq!(sb.restart(&["--list", "missing"]).status.code(), Some(125));

    // --verify: good, incomplete, legacy, by every kind of address.
    let out = sb.restart(&["--verify", "job", "-s", "0"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("Snapshot: {}\n", series.join("0").display())), "{stdout}");
    assert!(stdout.contains("\nSeq: 0\n") && stdout.contains("\nComponent: self\n"), "{stdout}");
    assert!(stdout.contains("\nState: good\n"), "{stdout}");
    assert_eq!(
        sb.restart(&["--verify", series.join("1").to_str().unwrap()]).status.code(),
        Some(0)
    );
    let out = sb.restart(&["--verify", "-l", series.to_str().unwrap(), "-r", "2"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains("\nSeq: 2\n"), "{:?}", text(&out));
    let out = sb.restart(&["--verify", "job", "-s", "3"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("State: incomplete: empty: nothing was written in it"),
        "{:?}",
        text(&out)
    );
    // A series without -s: its newest snapshot, here the one without a manifest.
    let out = sb.restart(&["--verify", "job"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("\nSeq: 4\n"), "{stdout}");
    assert!(stdout.contains("\nState: corrupt: opalcrs_manifest.json: missing\n"), "{stdout}");
    assert!(stdout.contains("\nNewest good: 2 "), "{stdout}");
    // Only a directory of the old layout is legacy: good enough to restart, unchecked.
    let out = sb.restart(&["--verify", "opal_snapshot_77.ckpt"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("\nState: legacy: "), "{stdout}");
    assert!(stderr.contains("note:") && stderr.contains("unchecked"), "{stderr}");
    let value = json(&sb.restart(&["--verify", "--json", "job", "-s", "3"]));
    assert_eq!(value["version"], 1);
    assert_eq!((value["seq"].as_u64(), value["state"].as_str()), (Some(3), Some("incomplete")));
    assert_eq!(value["series"], series.display().to_string());
    assert_eq!(
        value["newest_good"],
        Value::Null,
        "-s names one snapshot: no fallback is looked for"
    );
    // Failures with --json are JSON too.
    let out = sb.restart(&["--verify", "--json", "nothing"]);
    assert_eq!(out.status.code(), Some(125));
    let value = json(&out);
    assert_eq!(value["error"]["code"], 125);
    assert!(value["error"]["message"].as_str().unwrap().contains("no such snapshot"), "{value}");
    let out = sb.checkpoint(&["--list", "--json", "-w", sb.path("missing").to_str().unwrap()]);
    assert_eq!((out.status.code(), json(&out)["error"]["code"].as_i64()), (Some(1), Some(1)));
    // Nothing to verify.
    for args in [
        &["--verify", "nothing"][..],
        &["--verify", "job", "-s", "9"],
        &["--verify"],
        &["--verify", "--list", "job"],
    ] {
        let out = sb.restart(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {:?}", text(&out));
    }
}

#[test]
fn corrupt_snapshots_are_reported_and_skipped_at_restart() {
    let sb = Sandbox::new("lifecycle-corrupt");
    let pristine = three_good_snapshots(&sb);
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 3] = [
        (
            "flip",
            |file| {
                let mut bytes = fs::read(file).unwrap();
                bytes[0] ^= 0x01;
                fs::write(file, bytes).unwrap();
            },
            "xxh3-128 ",
        ),
        (
            "truncate",
            |file| fs::File::options().write(true).open(file).unwrap().set_len(1).unwrap(),
            "size 1, expected ",
        ),
        ("delete", |file| fs::remove_file(file).unwrap(), "missing"),
    ];
    for (case, damage, reason) in cases {
        let series = sb.path(case);
        copy_tree(&pristine, &series);
        damage(&series.join("2/state"));
        let newest = series.join("2");

        // --verify names the file and why, by numbered path and by series.
        for args in [&["--verify", newest.to_str().unwrap()][..], &["--verify", case]] {
            let out = sb.restart(args);
            let (stdout, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(1), "{case} {args:?}: {stdout}{stderr}");
            assert!(
                stdout.contains(&format!("\nState: corrupt: state: {reason}")),
                "{case}: {stdout}"
            );
        }
        let (stdout, _) = text(&sb.restart(&["--verify", case]));
        assert!(stdout.contains("\nNewest good: 1 "), "{case}: {stdout}");
        let value = json(&sb.restart(&["--verify", "--json", case]));
        assert_eq!(
            (value["state"].as_str(), value["file"].as_str()),
            (Some("corrupt"), Some("state")),
            "{value}"
        );
        assert_eq!(value["newest_good"], 1);
        assert_eq!(sb.restart(&["--verify", case, "-s", "1"]).status.code(), Some(0));

        // --list shows it, in text and JSON.
        let (listing, _) = text(&sb.restart(&["--list", case]));
        assert_eq!(
            row(&listing, "2")[4..7],
            ["corrupt:", "state:", reason.split_whitespace().next().unwrap()],
            "{listing}"
        );
        assert_eq!(row(&listing, "1")[4], "good", "{listing}");
        let value = json(&sb.checkpoint(&["--list", "--json", case]));
        let snapshot = &value["series"][0]["snapshots"][2];
        assert_eq!(
            (snapshot["state"].as_str(), snapshot["file"].as_str()),
            (Some("corrupt"), Some("state"))
        );
        assert!(
            snapshot["detail"].as_str().unwrap().starts_with(&format!("state: {reason}")),
            "{value}"
        );

        // A restart of the series skips it, says why, and restarts snapshot 1.
        let from = log_len(&sb.path("log"));
        let (pid, stderr) = restart_fork(&sb, &[case]);
        let restarted = Restarted(pid);
        assert!(
            stderr.contains(&format!("skipping snapshot 2: corrupt: state: {reason}")),
            "{case}: {stderr}"
        );
        assert_restarted_from(&sb, "log", from, &series.join("1"));
        drop(restarted);

        // Asking for it by number fails clearly.
        let out = sb.restart(&["-s", "2", case]);
        assert_eq!(out.status.code(), Some(125), "{case}: {:?}", text(&out));
        let expected =
            format!("snapshot {} cannot be used: corrupt: state: {reason}", newest.display());
        assert!(text(&out).1.contains(&expected), "{case}: {:?}", text(&out));
    }
}

/// Finding 4 of issue 12: a numbered snapshot is checked against its manifest or not
/// used at all. Without the manifest (and a flipped byte the manifest would have
/// caught), or with anything the manifest does not list, it is corrupt: `--verify`
/// says so and a restart of the series falls back to the older good snapshot.
#[test]
fn a_numbered_snapshot_with_a_hole_in_its_manifest_is_corrupt_and_skipped() {
    let sb = Sandbox::new("lifecycle-holes");
    let pristine = three_good_snapshots(&sb);
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 5] = [
        (
            "no-manifest",
            |dir| {
                fs::remove_file(dir.join("opalcrs_manifest.json")).unwrap();
                let mut bytes = fs::read(dir.join("state")).unwrap();
                bytes[0] ^= 0x01;
                fs::write(dir.join("state"), bytes).unwrap();
            },
            "corrupt: opalcrs_manifest.json: missing",
        ),
        (
            "extra-file",
            |dir| fs::write(dir.join("extra"), b"not listed").unwrap(),
            "corrupt: extra: not listed in the manifest",
        ),
        (
            "symlink",
            |dir| std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap(),
            "corrupt: link: not listed in the manifest",
        ),
        (
            "extra-dir",
            |dir| {
                fs::create_dir(dir.join("more")).unwrap();
                fs::write(dir.join("more/state"), b"1").unwrap();
            },
            "corrupt: more: not listed in the manifest",
        ),
        (
            "empty-dir",
            |dir| fs::create_dir(dir.join("more")).unwrap(),
            "corrupt: more: not listed in the manifest",
        ),
    ];
    for (case, damage, why) in cases {
        let series = sb.path(case);
        copy_tree(&pristine, &series);
        damage(&series.join("2"));

        let out = sb.restart(&["--verify", case]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{case}: {stdout}{stderr}");
        assert!(stdout.contains(&format!("\nState: {why}\n")), "{case}: {stdout}");
        assert!(stdout.contains("\nNewest good: 1 "), "{case}: {stdout}");
        let (listing, _) = text(&sb.restart(&["--list", case]));
        assert_eq!(row(&listing, "2")[4], "corrupt:", "{case}: {listing}");

        let from = log_len(&sb.path("log"));
        let (pid, stderr) = restart_fork(&sb, &[case]);
        let restarted = Restarted(pid);
        assert!(stderr.contains(&format!("skipping snapshot 2: {why}")), "{case}: {stderr}");
        assert_restarted_from(&sb, "log", from, &series.join("1"));
        drop(restarted);

        let out = sb.restart(&["-s", "2", case]);
        assert_eq!(out.status.code(), Some(125), "{case}: {:?}", text(&out));
        assert!(
            text(&out).1.contains(&format!("cannot be used: {why}")),
            "{case}: {:?}",
            text(&out)
        );
    }
}

/// What a manifest cannot list (here a symbolic link put into the snapshot while the
/// checkpoint callback writes it) fails the checkpoint instead of publishing a snapshot
/// that would never verify.
#[test]
fn a_checkpoint_whose_snapshot_holds_a_link_fails_and_publishes_nothing() {
    let sb = Sandbox::new("lifecycle-unlistable");
    let app = start(&sb, "log", &["--slow", "1500"], &[("OMPI_MCA_crs_base_snapshot_name", "job")]);
    let series = sb.path("job");
    let mut tool = sb.command(checkpoint_tool());
    tool.arg(app.arg());
    let temporary = || {
        let listing = fs::read_dir(&series).ok()?;
        listing
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir())
            .map(|e| e.path())
    };
    let linked = std::thread::scope(|scope| {
        let checkpoint = scope.spawn(move || tool.output().unwrap());
        assert!(wait_for(LONG, || temporary().is_some()), "no temporary in {}", series.display());
        std::os::unix::fs::symlink("/etc/passwd", temporary().unwrap().join("link")).unwrap();
        checkpoint.join().unwrap()
    });
    let (stdout, stderr) = text(&linked);
    assert_eq!(linked.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("link: not a regular file or directory cannot be listed in the manifest"),
        "{stderr}"
    );
    assert_eq!(seqs(&series), Vec::<u64>::new());
    // The program goes on, and its next checkpoint is good.
    let (_, snapshot) = checkpoint_ok(&sb, &[&app.arg()]);
    assert_eq!(verify(&snapshot), Verdict::Good);
}

#[test]
fn keep_retains_the_newest_and_a_failed_checkpoint_removes_nothing() {
    let sb = Sandbox::new("lifecycle-keep");
    let env =
        [("OMPI_MCA_crs_base_snapshot_keep", "2"), ("OMPI_MCA_crs_base_snapshot_name", "kept")];
    let app = start(&sb, "log", &["--fail-at", "6"], &env);
    let series = sb.path("kept");
    for seq in 0..5 {
        assert_eq!(checkpoint_ok(&sb, &[&app.arg()]).1, series.join(seq.to_string()));
    }
    assert_eq!(entries(&series), [".lock", "3", "4"]);

    // The sixth checkpoint fails in the program's callback: nothing is pruned.
    let out = sb.checkpoint(&[&app.arg()]);
    assert_eq!(out.status.code(), Some(6), "{:?}", text(&out));
    assert!(text(&out).1.contains("returned no restart command"), "{:?}", text(&out));
    assert!(sb.read("log").contains("checkpoint call 6 fails"));
    assert_eq!(entries(&series), [".lock", "3", "4"]);
    for seq in [3, 4] {
        assert_eq!(verify(&series.join(seq.to_string())), Verdict::Good);
    }

    // The next one succeeds and prunes again.
    assert_eq!(checkpoint_ok(&sb, &[&app.arg()]).1, series.join("5"));
    assert_eq!(entries(&series), [".lock", "4", "5"]);
    assert!(verify(&series.join("5")) == Verdict::Good);
}

#[test]
fn periodic_checkpoints_publish_complete_snapshots() {
    let sb = Sandbox::new("lifecycle-interval");
    let app = start(&sb, "log", &[], &[("OMPI_MCA_opal_cr_checkpoint_interval", "1")]);
    let started = Instant::now();
    let series = sb.path(&format!("opal_snapshot_{}.ckpt", app.pid()));
    let two = wait_for(Duration::from_millis(3500), || series.is_dir() && seqs(&series).len() >= 2);
    assert!(two, "{:?} after {:?}", series.is_dir().then(|| seqs(&series)), started.elapsed());
    drop(app);
    let published = seqs(&series);
    for seq in &published {
        let out = sb.restart(&["--verify", series.join(seq.to_string()).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        assert!(text(&out).0.contains("\nState: good\n"), "{:?}", text(&out));
    }
    // The interval counts from the end of the previous checkpoint.
    let created: Vec<u64> = published
        .iter()
        .map(|seq| Manifest::read(&series.join(seq.to_string())).unwrap().created_unix_ms)
        .collect();
    for pair in created.windows(2) {
        assert!(pair[1] - pair[0] >= 1000, "checkpoints {created:?} less than 1 s apart");
    }
    assert!(sb.read("log").matches("checkpoint default").count() >= 2);
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Debug, Default)]
struct FaultStats {
    trials: u32,
    program_kills: u32,
    tool_kills: u32,
    /// Program kills by where they landed.
    killed_before_checkpoint_began: u32,
    killed_in_checkpoint_before_callback_returned: u32,
    killed_after_callback_before_publish: u32,
    killed_after_publish_before_tool_had_result: u32,
    killed_after_tool_had_result: u32,
    /// Tool kills that came too late: the tool had already exited.
    tool_finished_before_kill: u32,
    /// Tool kills whose request still reached the program (it published anyway).
    tool_kills_request_served: u32,
    published: usize,
    broken: usize,
    restarts: u32,
}

/// Kills the program or the tool (alternately) at a random point of a checkpoint, over
/// and over, into one series; every snapshot that ever appears must verify, the newest
/// must restart, and after a killed tool the process must checkpoint again at once.
#[test]
fn killing_the_program_or_the_tool_never_publishes_a_broken_snapshot() {
    const TRIALS: u32 = 160;
    let seed = std::env::var("OPALCRS_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
                | 1
        });
    eprintln!("fault injection seed {seed} (set OPALCRS_FAULT_SEED to repeat)");
    let mut rng = Rng(seed);
    let sb = Sandbox::new("lifecycle-faults");
    // Pruning from the 40th snapshot on, so kills land in it too.
    let env = [
        ("OMPI_MCA_crs_base_snapshot_name", "faults"),
        ("OMPI_MCA_crs", "self"),
        ("OMPI_MCA_crs_base_snapshot_keep", "40"),
    ];
    let series = sb.path("faults");
    let log = sb.path("log");
    let began = Instant::now();
    let mut stats = FaultStats::default();
    let mut checked: BTreeSet<u64> = BTreeSet::new();
    let check_new = |stats: &mut FaultStats, checked: &mut BTreeSet<u64>| -> Vec<u64> {
        let mut new = Vec::new();
        for seq in seqs(&series) {
            if checked.insert(seq) {
                let verdict = verify(&series.join(seq.to_string()));
                if verdict != Verdict::Good {
                    stats.broken += 1;
                    eprintln!("BROKEN snapshot {seq}: {verdict}");
                }
                new.push(seq);
            }
        }
        stats.published = checked.len();
        new
    };
    let mut reused: Option<App> = None;
    let mut reused_trials = 0;

    for trial in 0..TRIALS {
        stats.trials += 1;
        let delay = Duration::from_millis(rng.below(31));
        if trial % 2 == 0 {
            // Kill the program.
            stats.program_kills += 1;
            let slow = rng.below(21).to_string();
            let from = log_len(&log);
            let app = start(&sb, "log", &["--slow", &slow], &env);
            let pid = app.pid();
            let tool = sb
                .command(checkpoint_tool())
                .arg(app.arg())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            app.kill();
            let out = tool.wait_with_output().unwrap();
            let code = out.status.code();
            assert!(
                matches!(code, Some(0 | 2 | 3 | 6)),
                "trial {trial}: tool exit {code:?}: {:?}",
                text(&out)
            );
            let mine: Vec<u64> = check_new(&mut stats, &mut checked)
                .into_iter()
                .filter(|seq| {
                    Manifest::read(&series.join(seq.to_string())).is_ok_and(|m| m.pid == pid as i32)
                })
                .collect();
            let called = read_from(&log, from).lines().any(|line| {
                line.starts_with("checkpoint default ") && line.contains(&format!("-{pid}-"))
            });
            let temporary = entries(&series)
                .iter()
                .any(|name| name.starts_with(".tmp-") && name.contains(&format!("-{pid}-")));
            match (code, mine.is_empty(), called, temporary) {
                (Some(0), false, ..) => {
                    assert_eq!(snapshot_path(&out), series.join(mine[0].to_string()));
                    stats.killed_after_tool_had_result += 1;
                }
                (Some(0), true, ..) => panic!(
                    "trial {trial}: the tool reported a snapshot that is not there: {:?}",
                    text(&out)
                ),
                (_, false, ..) => stats.killed_after_publish_before_tool_had_result += 1,
                (_, true, true, _) => stats.killed_after_callback_before_publish += 1,
                (_, true, false, true) => stats.killed_in_checkpoint_before_callback_returned += 1,
                (_, true, false, false) => stats.killed_before_checkpoint_began += 1,
            }
        } else {
            // Kill the tool; the program lives on and is reused.
            stats.tool_kills += 1;
            if reused.is_none() || reused_trials == 16 {
                let slow = rng.below(21).to_string();
                reused = Some(start(&sb, "log", &["--slow", &slow], &env));
                reused_trials = 0;
            }
            reused_trials += 1;
            let app = reused.as_ref().unwrap();
            let mut tool = sb
                .command(checkpoint_tool())
                .arg(app.arg())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            if tool.try_wait().unwrap().is_some() {
                stats.tool_finished_before_kill += 1;
            }
            stop(&mut tool);
            // The next checkpoint of the same process succeeds: nothing is left blocking.
            let out = sb.checkpoint(&["--wait", &app.arg()]);
            assert!(
                out.status.success(),
                "trial {trial}: checkpoint after a killed tool: {:?}",
                text(&out)
            );
            assert!(alive(app.pid()), "trial {trial}: the program died when its tool was killed");
            let new = check_new(&mut stats, &mut checked);
            assert!(new.contains(
                &snapshot_path(&out).file_name().unwrap().to_str().unwrap().parse().unwrap()
            ));
            if new.len() > 1 {
                stats.tool_kills_request_served += 1;
            }
        }
        if trial % 20 == 19 {
            // The newest snapshot restarts, and the tool calls it good.
            let newest = *seqs(&series).last().expect("nothing published yet");
            let out = sb.restart(&["--verify", "faults"]);
            assert_eq!(out.status.code(), Some(0), "trial {trial}: {:?}", text(&out));
            assert!(text(&out).0.contains(&format!("\nSeq: {newest}\n")), "{:?}", text(&out));
            let from = log_len(&log);
            let (pid, stderr) = restart_fork(&sb, &["faults"]);
            let restarted = Restarted(pid);
            assert!(!stderr.contains("skipping"), "{stderr}");
            assert_restarted_from(&sb, "log", from, &series.join(newest.to_string()));
            drop(restarted);
            stats.restarts += 1;
        }
    }
    // One more checkpoint by a live writer removes every temporary the killed ones left.
    let app = reused.take().unwrap();
    checkpoint_ok(&sb, &["--wait", &app.arg()]);
    check_new(&mut stats, &mut checked);
    drop(app);
    let leftovers: Vec<String> =
        entries(&series).into_iter().filter(|name| name.starts_with(".tmp-")).collect();
    assert!(leftovers.is_empty(), "temporaries left behind: {leftovers:?}");
    // Every snapshot, old and new, still verifies.
    for seq in seqs(&series) {
        assert_eq!(verify(&series.join(seq.to_string())), Verdict::Good, "snapshot {seq}");
    }
    eprintln!("fault injection: {stats:#?} in {:?}", began.elapsed());
    assert_eq!(stats.broken, 0, "{stats:#?}");
    assert!(stats.trials >= 100 && stats.restarts >= 5, "{stats:#?}");
}

/// `opal-checkpoint --timeout 20 PID`: how long it took and whether it succeeded.
fn timed_checkpoint(sb: &Sandbox, app: &App) -> (Duration, Output) {
    let began = Instant::now();
    let out = sb.checkpoint(&["--timeout", "20", &app.arg()]);
    (began.elapsed(), out)
}

/// Issue 12, finding 7: a client of the same user that trickles its request (one byte
/// every 1.5 s), or a thousand that connect and say nothing, must not hold up a real
/// request to the process.
#[test]
fn slow_or_silent_clients_do_not_delay_a_real_checkpoint() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sb = Sandbox::new("lifecycle-stall");
    let app = start(&sb, "log", &[], &[]);
    let (normal, out) = timed_checkpoint(&sb, &app);
    assert!(out.status.success(), "{:?}", text(&out));
    let endpoint = opalcrs::control::locate(app.pid() as i32).unwrap();

    let stop = AtomicBool::new(false);
    let (trickled, out) = std::thread::scope(|scope| {
        for _ in 0..3 {
            let (endpoint, stop) = (&endpoint, &stop);
            scope.spawn(move || {
                let stream = endpoint.connect(Duration::from_secs(30)).unwrap();
                while !stop.load(Ordering::SeqCst) && (&stream).write_all(b" ").is_ok() {
                    let pause = Instant::now();
                    while !stop.load(Ordering::SeqCst)
                        && pause.elapsed() < Duration::from_millis(1500)
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        let measured = timed_checkpoint(&sb, &app);
        stop.store(true, Ordering::SeqCst);
        measured
    });
    let trickled_ok = out.status.success();

    let silent: Vec<_> =
        (0..1000).map(|_| endpoint.connect(Duration::from_secs(30)).unwrap()).collect();
    let (with_silent, out) = timed_checkpoint(&sb, &app);
    let silent_ok = out.status.success();
    drop(silent);

    // A client that keeps opening silent connections while the real request runs.
    let stop = AtomicBool::new(false);
    let (flooded, out) = std::thread::scope(|scope| {
        let (endpoint, stop) = (&endpoint, &stop);
        scope.spawn(move || {
            let mut open = std::collections::VecDeque::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(stream) = endpoint.connect(Duration::from_secs(30)) {
                    open.push_back(stream);
                }
                if open.len() > 1000 {
                    open.pop_front();
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let measured = timed_checkpoint(&sb, &app);
        stop.store(true, Ordering::SeqCst);
        measured
    });
    let flooded_ok = out.status.success();
    eprintln!(
        "checkpoint alone {normal:?}; with 3 trickling clients {trickled:?} (ok {trickled_ok}); \
         with 1000 silent connections {with_silent:?} (ok {silent_ok}); \
         while a client opens connections without end {flooded:?} (ok {flooded_ok})"
    );
    assert!(trickled_ok && silent_ok && flooded_ok, "{:?}", text(&out));
    // A client that never stops connecting once kept the listener accepting forever,
    // so the finished checkpoint was never answered (20 s, timed out).
    let bound = normal + Duration::from_secs(1);
    assert!(trickled < bound && with_silent < bound && flooded < bound, "delayed beyond {bound:?}");
    // The process still serves.
    checkpoint_ok(&sb, &[&app.arg()]);
}

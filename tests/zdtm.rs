//! CRIU's own zdtm static tests through the library: the quick subset of
//! `scripts/zdtm.sh` (about 40 tests, each run with the CRIU command line and then
//! preloaded with the library, checkpointed by `opal-checkpoint`, killed and restored by
//! `opal-restart`; the test itself says PASS or FAIL). Needs root, CRIU >= 4 and CRIU's
//! source tree (kept by scripts/install-criu.sh); without them it says why and passes.

mod common;
use common::*;
use std::process::Command;

/// The script's exit status when it cannot run here (no root, CRIU or CRIU source).
const CANNOT_RUN: i32 = 3;

#[test]
fn zdtm_quick_subset_passes_through_the_library_wherever_criu_passes() {
    require_criu!();
    let criu = opalcrs::components::criu::binary::find(None).unwrap().path;
    let out = Command::new("bash")
        .arg(repo().join("scripts/zdtm.sh"))
        .arg("--quick")
        .env("CRIU", &criu)
        .env("OPALCRS_BIN", lib_dir())
        .output()
        .expect("running scripts/zdtm.sh");
    let (stdout, stderr) = text(&out);
    if out.status.code() == Some(CANNOT_RUN) {
        eprintln!("skipped: {}", stderr.trim());
        return;
    }
    print!("{stdout}");
    assert!(out.status.success(), "zdtm.sh --quick: {:?}\n{stdout}{stderr}", out.status);
    let figure = stdout.lines().find(|l| l.starts_with("zdtm: ours ")).expect("no figure");
    let counts: Vec<u32> = figure
        .trim_start_matches("zdtm: ours ")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .take(3)
        .collect();
    // "N/M where criu passes M": all of them, and not an empty run.
    assert!(counts.len() == 3 && counts[0] == counts[1] && counts[1] >= 25, "{figure}");
}

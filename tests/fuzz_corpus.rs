//! Replays the fuzz corpora and every input that ever crashed a fuzz target
//! (`fuzz/corpus/<target>/*`, `fuzz/crashers/<target>/*`) through the same checks as the
//! AFL targets, so that a fixed crash stays fixed. Needs no AFL: the checks are plain
//! functions in `fuzz/src/checks.rs`, included here by path.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("metadata", checks::metadata),
    ("manifest", checks::manifest),
    ("param_file", checks::param_file),
    ("control", checks::control),
];

/// The regular files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every input of `<fuzz>/<kind>/<target>/` and returns the ones that panic.
fn replay(kind: &str, target: &str, check: Check) -> (usize, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let files = inputs(&dir);
    let mut failures = Vec::new();
    for path in &files {
        let data = fs::read(path).expect("readable input");
        if let Err(payload) = panic::catch_unwind(|| check(&data)) {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn corpus_and_crashers_pass_every_check() {
    let mut failures = Vec::new();
    let mut corpus_files = 0;
    for &(target, check) in TARGETS {
        for kind in ["corpus", "crashers"] {
            let (count, failed) = replay(kind, target, check);
            if kind == "corpus" {
                assert!(count > 0, "no seed inputs in fuzz/corpus/{target}/");
                corpus_files += count;
            }
            failures.extend(failed);
        }
    }
    assert!(corpus_files >= TARGETS.len());
    assert!(failures.is_empty(), "{} input(s) fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn checks_accept_valid_inputs() {
    // Valid inputs of each format pass their check (in the 1.6 metadata format too).
    checks::metadata(b"# PID: 1\n# Component: self\n# OPALCRS Param: a=b\n");
    checks::param_file(b"a = 1\n# c\nb=2");
    checks::control(br#"{"v":1,"op":"checkpoint","name":"x"}"#);
    checks::manifest(b"{}");
}

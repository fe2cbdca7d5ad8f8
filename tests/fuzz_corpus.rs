//! Replays the fuzz corpora and every input that ever crashed a fuzz target
//! (`fuzz/corpus/<target>/*`, `fuzz/crashers/<target>/*`) through the same checks as the
//! AFL targets, so that a fixed crash stays fixed, and gives every target a short
//! mutation run of its own (the long runs are AFL's, outside CI: `fuzz/run.sh`). Needs no
//! AFL: the checks are plain functions in `fuzz/src/checks.rs`, included here by path.

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

/// The panic message of a failed check.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs `check` on every input of `<fuzz>/<kind>/<target>/` and returns the ones that panic.
fn replay(kind: &str, target: &str, check: Check) -> (usize, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let files = inputs(&dir);
    let mut failures = Vec::new();
    for path in &files {
        let data = fs::read(path).expect("readable input");
        if let Err(payload) = panic::catch_unwind(|| check(&data)) {
            failures.push(format!("{}: {}", path.display(), panic_message(payload)));
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

/// Inputs per target in the smoke run: a few seconds for all four in a debug build.
const SMOKE_INPUTS: usize = 20_000;

/// Fragments that the formats give meaning to, spliced into inputs.
const TOKENS: &[&[u8]] = &[
    b"# PID: ",
    b"# OPAL CRS Component: ",
    b"# CONTEXT: ",
    b"# OPALCRS Param: ",
    b"=",
    b"\n",
    b"\r\n",
    b"/*",
    b"*/",
    b"//",
    b"~/",
    b"\0",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\u0000",
    b"-1",
    b"18446744073709551616",
    b"1e999",
    b"null",
    b"\xff\xfe",
];

/// xorshift64*: a fixed seed, so that a failure found here is found again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of a seed: flip, overwrite, insert or delete bytes, insert a
/// token, or splice in part of another seed.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        let last = data.len().saturating_sub(1);
        match rng.below(6) {
            0 if !data.is_empty() => data[at.min(last)] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at.min(last)] = rng.next() as u8,
            2 => data.insert(at, rng.next() as u8),
            3 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let part = &other[from..(from + rng.below(64)).min(other.len())];
                data.splice(at..at, part.iter().copied());
            }
        }
    }
    data
}

#[test]
fn a_short_mutation_run_of_every_target_finds_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for &(target, check) in TARGETS {
        let seeds: Vec<Vec<u8>> =
            inputs(&root.join(target)).iter().map(|p| fs::read(p).unwrap()).collect();
        assert!(!seeds.is_empty(), "no seed inputs for {target}");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..SMOKE_INPUTS {
            let data = mutate(&mut rng, &seeds);
            if let Err(payload) = panic::catch_unwind(|| check(&data)) {
                // Reported with the input, to be saved under fuzz/crashers/<target>/.
                failures.push(format!("{target}: {} on input {data:?}", panic_message(payload)));
                break;
            }
            distinct.insert(data);
        }
        // The run must really vary its inputs, or it proves nothing.
        assert!(
            distinct.len() > SMOKE_INPUTS / 2,
            "{target}: only {} distinct inputs",
            distinct.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

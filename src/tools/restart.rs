//! `opal-restart [options] SNAPSHOT`: restarts a process from a snapshot. By default
//! it becomes the restarted program (same PID, its exit status); `--fork` prints the
//! child's PID and exits 0.

use super::{parse, usage, OptionDef};
use crate::codes::*;
use crate::error::Error;
use crate::framework::RestartOutcome;
use crate::restart::{self, Target};
use std::path::PathBuf;

pub const OPTIONS: &[OptionDef] = &[
    OptionDef { names: &["h", "help"], value: None, help: "Show this help" },
    OptionDef { names: &["v", "verbose"], value: None, help: "Say what is restarted, and how" },
    OptionDef { names: &["fork"], value: None, help: "Restart as a child; print its PID and exit 0" },
    OptionDef { names: &["w", "where"], value: Some("DIR"), help: "Directory that holds the series (crs_base_snapshot_dir)" },
    OptionDef { names: &["s", "seq"], value: Some("SEQ"), help: "Restart snapshot SEQ of the series (default: newest good)" },
    OptionDef { names: &["l", "location"], value: Some("DIR"), help: "Directory that contains the snapshot (1.10 style)" },
    OptionDef { names: &["r", "reference"], value: Some("REF"), help: "Snapshot reference inside --location (1.10 style)" },
    OptionDef { names: &["m", "metadata"], value: Some("FILE"), help: "Metadata file name (only snapshot_meta.data)" },
];

pub(crate) const EXIT_USAGE: i32 = 125;
pub(crate) const EXIT_CANNOT_RESTART: i32 = 126;
pub(crate) const EXIT_NOT_FOUND: i32 = 127;

pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let synopsis = "opal-restart [options] SNAPSHOT | opal-restart [options] -l DIR -r REF";
    let title = "Open PAL Single Process Restart Tool";
    let parsed = match parse(&args, OPTIONS) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("opal-restart: command line error ({e})\nType 'opal-restart --help' for usage.");
            return EXIT_USAGE;
        }
    };
    if parsed.has("h") {
        print!("{}", usage(synopsis, title, OPTIONS));
        return 0;
    }
    let fail = |e: Error, exit: i32| {
        eprintln!("opal-restart: {e}");
        exit
    };
    if let Some(name) = parsed.value("m").filter(|m| *m != crate::snapshot::METADATA_FILE) {
        return fail(Error::msg(format!("metadata file {name:?} is not supported: snapshots keep theirs in snapshot_meta.data")), EXIT_USAGE);
    }
    let mut cmdline = parsed.mca.clone();
    if let Some(dir) = parsed.value("w") {
        cmdline.push(("crs_base_snapshot_dir".into(), dir.to_string()));
    }
    let params = match crate::runtime::load_params(cmdline) {
        Ok(p) => p,
        Err(e) => return fail(e, EXIT_USAGE),
    };
    let verbose = parsed.has("v");
    crate::output::set_verbosity(if verbose { 1 } else { 0 });
    let seq = match parsed.value("s").map(str::parse::<u64>) {
        None => None,
        Some(Ok(seq)) => Some(seq),
        Some(Err(_)) => return fail(Error::msg("-s takes a snapshot sequence number"), EXIT_USAGE),
    };
    let target = match (parsed.value("l"), parsed.value("r"), parsed.operands.as_slice()) {
        (Some(location), Some(reference), []) => match reference.parse::<u64>() {
            // `-l <series> -r <seq>` addresses one numbered snapshot of ours.
            Ok(number) if PathBuf::from(location).join(reference).is_dir() && seq.is_none() => {
                Target { reference: location.to_string(), base: PathBuf::from("."), seq: Some(number) }
            }
            _ => Target { reference: reference.to_string(), base: PathBuf::from(location), seq },
        },
        (location, None, [reference]) => Target {
            reference: reference.clone(),
            base: location.map(PathBuf::from).unwrap_or_else(|| crate::runtime::snapshot_base_dir(&params)),
            seq,
        },
        (_, None, []) => {
            eprintln!("opal-restart: no snapshot given\nType 'opal-restart --help' for usage.");
            return EXIT_USAGE;
        }
        _ => return fail(Error::msg("give one snapshot, either as an operand or as -r REF"), EXIT_USAGE),
    };

    let prepared = match restart::prepare(&target, params, verbose) {
        Ok(p) => p,
        Err(e) => return fail(e, EXIT_USAGE),
    };
    for (skipped, why) in &prepared.skipped {
        eprintln!("opal-restart: skipping snapshot {skipped}: {why}");
    }
    if prepared.legacy {
        eprintln!("opal-restart: note: {} has no manifest (1.6/1.7 layout); it cannot be verified", prepared.plan.dir.display());
    }
    if verbose {
        eprintln!(
            "opal-restart: restarting {} with component {}",
            prepared.plan.dir.display(),
            prepared.component.name()
        );
    }
    if let Err(e) = restart::apply_records(&prepared.plan.metadata) {
        return fail(e, EXIT_CANNOT_RESTART);
    }
    match prepared.component.restart(&prepared.plan, parsed.has("fork")) {
        Ok(RestartOutcome::Spawned { pid, note }) => {
            if let Some(note) = note {
                eprintln!("opal-restart: {note}");
            }
            println!("{pid}");
            0
        }
        Ok(RestartOutcome::Exited(status)) => status,
        Err(e) if e.code() == OPAL_ERR_NOT_FOUND => fail(e, EXIT_NOT_FOUND),
        Err(e) => fail(e, EXIT_CANNOT_RESTART),
    }
}

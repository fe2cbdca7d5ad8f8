//! `opal-restart [options] SNAPSHOT`: restarts a process from a snapshot. By default
//! it becomes the restarted program (same PID, its exit status); `--fork` prints the
//! child's PID and exits 0. `--verify SNAPSHOT` checks a snapshot against its manifest
//! and `--list [SERIES]` shows the snapshots of one or every series, restarting nothing.

use super::{parse, usage, OptionDef};
use crate::codes::*;
use crate::error::Error;
use crate::framework::RestartOutcome;
use crate::restart::{self, Step, Target};
use crate::snapshot::{self, SeriesInfo, SnapshotInfo, Verdict};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const OPTIONS: &[OptionDef] = &[
    OptionDef { names: &["h", "help"], value: None, help: "Show this help" },
    OptionDef { names: &["v", "verbose"], value: None, help: "Say what is restarted, and how" },
    OptionDef { names: &["fork"], value: None, help: "Restart as a child; print its PID and exit 0" },
    OptionDef { names: &["w", "where"], value: Some("DIR"), help: "Directory that holds the series (crs_base_snapshot_dir)" },
    OptionDef { names: &["s", "seq"], value: Some("SEQ"), help: "Restart snapshot SEQ of the series (default: newest good)" },
    OptionDef { names: &["l", "location"], value: Some("DIR"), help: "Directory that contains the snapshot (1.10 style)" },
    OptionDef { names: &["r", "reference"], value: Some("REF"), help: "Snapshot reference inside --location (1.10 style)" },
    OptionDef { names: &["m", "metadata"], value: Some("FILE"), help: "Metadata file name (only snapshot_meta.data)" },
    OptionDef { names: &["verify"], value: None, help: "Check SNAPSHOT (of a series: the newest, or -s SEQ) against its manifest, restart nothing; exit 0 good or legacy, 1 corrupt, 2 incomplete, 3 not restorable here" },
    OptionDef { names: &["list"], value: None, help: "List each snapshot of SERIES, or of every series in -w DIR: seq, time, component, size, state" },
    OptionDef { names: &["json"], value: None, help: "With --list or --verify: print one JSON object on stdout" },
];

pub(crate) const EXIT_USAGE: i32 = 125;
pub(crate) const EXIT_CANNOT_RESTART: i32 = 126;
pub(crate) const EXIT_NOT_FOUND: i32 = 127;
/// `--verify` of a snapshot that is good, or legacy (a 1.6/1.7 layout: used unchecked).
pub(crate) const EXIT_VERIFY_GOOD: i32 = 0;
pub(crate) const EXIT_VERIFY_CORRUPT: i32 = 1;
pub(crate) const EXIT_VERIFY_INCOMPLETE: i32 = 2;
/// `--verify` of an intact snapshot that a restart on this node would refuse.
pub(crate) const EXIT_VERIFY_NOT_RESTORABLE: i32 = 3;

pub fn main() -> i32 {
    let args = super::args();
    let synopsis = "opal-restart [options] SNAPSHOT | opal-restart [options] -l DIR -r REF\n       opal-restart --verify [options] SNAPSHOT | opal-restart --list [options] [SERIES]";
    let title = "Open PAL Single Process Restart Tool";
    let parsed = match parse(&args, OPTIONS) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "opal-restart: command line error ({e})\nType 'opal-restart --help' for usage."
            );
            return EXIT_USAGE;
        }
    };
    if parsed.has("h") {
        print!("{}", usage(synopsis, title, OPTIONS));
        return 0;
    }
    // --list and --verify with --json report their failures as JSON on stdout too.
    let json_errors = parsed.has("json") && (parsed.has("list") || parsed.has("verify"));
    let fail = |e: Error, exit: i32| {
        if json_errors {
            println!(
                "{}",
                serde_json::json!({ "version": 1, "error": { "code": exit, "message": e.to_string() } })
            );
        } else {
            eprintln!("opal-restart: {e}");
        }
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
    let json = parsed.has("json");
    match (parsed.has("list"), parsed.has("verify")) {
        (true, true) => {
            return fail(Error::msg("--list and --verify cannot be combined"), EXIT_USAGE)
        }
        (false, false) if json => {
            return fail(Error::msg("--json needs --list or --verify"), EXIT_USAGE)
        }
        (true, false) => {
            if seq.is_some() || parsed.value("r").is_some() || parsed.has("fork") {
                return fail(Error::msg("--list takes a series, not -s, -r or --fork"), EXIT_USAGE);
            }
            let base = parsed
                .value("l")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::runtime::snapshot_base_dir(&params));
            return match parsed.operands.as_slice() {
                [] => list(&base, None, json),
                [series] => list(&base, Some(series), json),
                _ => Err(Error::msg("--list takes at most one series")),
            }
            .map_or_else(|e| fail(e, EXIT_USAGE), |()| 0);
        }
        _ => {}
    }
    let target = match (parsed.value("l"), parsed.value("r"), parsed.operands.as_slice()) {
        (Some(location), Some(reference), []) => match reference.parse::<u64>() {
            // `-l <series> -r <seq>` addresses one numbered snapshot of ours.
            Ok(number) if PathBuf::from(location).join(reference).is_dir() && seq.is_none() => {
                Target {
                    reference: location.to_string(),
                    base: PathBuf::from("."),
                    seq: Some(number),
                }
            }
            _ => Target { reference: reference.to_string(), base: PathBuf::from(location), seq },
        },
        (location, None, [reference]) => Target {
            reference: reference.clone(),
            base: location
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::runtime::snapshot_base_dir(&params)),
            seq,
        },
        (_, None, []) if json_errors => return fail(Error::msg("no snapshot given"), EXIT_USAGE),
        (_, None, []) => {
            eprintln!("opal-restart: no snapshot given\nType 'opal-restart --help' for usage.");
            return EXIT_USAGE;
        }
        _ => {
            return fail(
                Error::msg("give one snapshot, either as an operand or as -r REF"),
                EXIT_USAGE,
            )
        }
    };

    if parsed.has("verify") {
        if parsed.has("fork") {
            return fail(
                Error::msg("--verify restarts nothing: --fork makes no sense with it"),
                EXIT_USAGE,
            );
        }
        return match verify(&target, json) {
            Ok(code) => code,
            Err(e) => fail(e, EXIT_USAGE),
        };
    }
    let fork = parsed.has("fork");
    if crate::job::is_job(&target) {
        if fork {
            return fail(
                Error::msg("--fork: opal-restart stays the launcher of the job it restarts"),
                EXIT_USAGE,
            );
        }
        return match crate::job::choose(&target) {
            Ok(chosen) => restart_job("opal-restart", chosen, &params, verbose, None, &fail, None),
            Err(e) => fail(e, EXIT_USAGE),
        };
    }
    let announce = &mut |prepared: &restart::Prepared| {
        for (skipped, why) in &prepared.skipped {
            eprintln!("opal-restart: skipping snapshot {skipped}: {why}");
        }
        if prepared.legacy {
            eprintln!(
                "opal-restart: note: {} has no manifest (1.6/1.7 layout): unchecked, restarted as it is",
                prepared.plan.dir.display()
            );
        }
        if verbose {
            eprintln!(
                "opal-restart: restarting {} with component {}",
                prepared.plan.dir.display(),
                prepared.component.name()
            );
        }
        fork
    };
    match restart::run(&target, &params, verbose, announce) {
        Ok(RestartOutcome::Spawned { pid, note }) => {
            if let Some(note) = note {
                eprintln!("opal-restart: {note}");
            }
            println!("{pid}");
            0
        }
        Ok(RestartOutcome::Exited(status)) => status,
        Ok(RestartOutcome::Rejected(why)) => fail(Error::msg(why), EXIT_CANNOT_RESTART),
        Err((Step::Choose, e)) => fail(e, EXIT_USAGE),
        Err((Step::Start, e)) if e.code() == OPAL_ERR_NOT_FOUND => fail(e, EXIT_NOT_FOUND),
        Err((Step::Start, e)) => fail(e, EXIT_CANNOT_RESTART),
    }
}

/// Restarts the job from the global snapshot `chosen` ([`crate::job::choose`];
/// `opal-restart`, `opal-run -np`) and supervises it as its launcher: the job's status,
/// or the exit code of the failure. `size`: the number of ranks asked for, which the
/// snapshot must have. `wait_restored`: a criu job is restored as a child (PID, note)
/// that it waits for (passing signals on); without it, the restore waits itself.
pub(crate) fn restart_job(
    tool: &str,
    chosen: (snapshot::Resolved, crate::job::global::GlobalMetadata),
    params: &crate::params::Params,
    verbose: bool,
    size: Option<usize>,
    fail: &dyn Fn(Error, i32) -> i32,
    wait_restored: Option<&dyn Fn(i32, Option<String>) -> i32>,
) -> i32 {
    let (resolved, metadata) = chosen;
    for (skipped, why) in &resolved.skipped {
        eprintln!("{tool}: skipping snapshot {skipped}: {why}");
    }
    let ranks = metadata.ranks.len();
    if size.is_some_and(|size| size != ranks) {
        let message = format!(
            "global snapshot {} has {ranks} ranks, not the {} asked for",
            resolved.dir.display(),
            size.unwrap_or_default()
        );
        return fail(Error::msg(message), EXIT_USAGE);
    }
    eprintln!(
        "{tool}: restarting the job of {ranks} ranks from global snapshot {} (component {})",
        resolved.dir.display(),
        metadata.component
    );
    match crate::job::restart(&resolved, &metadata, params, verbose, wait_restored.is_some()) {
        Ok(RestartOutcome::Exited(status)) => status,
        Ok(RestartOutcome::Spawned { pid, note }) => match wait_restored {
            Some(wait) => wait(pid, note),
            None => fail(
                Error::msg(format!("the restored launcher {pid} was not waited for")),
                EXIT_CANNOT_RESTART,
            ),
        },
        Ok(RestartOutcome::Rejected(why)) => fail(Error::msg(why), EXIT_CANNOT_RESTART),
        Err((Step::Choose, e)) => fail(e, EXIT_USAGE),
        Err((Step::Start, e)) if e.code() == OPAL_ERR_NOT_FOUND => fail(e, EXIT_NOT_FOUND),
        Err((Step::Start, e)) => fail(e, EXIT_CANNOT_RESTART),
    }
}

/// `--verify`: checks the snapshot `target` addresses (for a series, snapshot `-s SEQ` or
/// the newest, without falling back to an older one) and returns the exit code.
fn verify(target: &Target, json: bool) -> Result<i32, Error> {
    let located = snapshot::locate(&target.reference, &target.base, target.seq)?;
    let mut info = SnapshotInfo::inspect(&located.dir, located.seq);
    // A snapshot whose metadata a restart cannot use is no good either.
    let mut component = None;
    if info.verdict.is_usable() {
        let usable = restart::read_metadata(&located.dir)
            .and_then(|metadata| restart::component_of(&located.dir, &metadata));
        match usable {
            Ok(usable) => component = Some(usable),
            Err(e) => {
                info.verdict = Verdict::Corrupt {
                    file: snapshot::METADATA_FILE.to_string(),
                    reason: e.message().to_string(),
                }
            }
        }
    }
    // What a restart here would refuse of an intact snapshot, in the restart's words.
    let refusal = component
        .and_then(|component| component.restorable_here(&located.dir).err())
        .map(|e| e.message().to_string());
    let code = match info.verdict {
        Verdict::Good | Verdict::Legacy if refusal.is_some() => EXIT_VERIFY_NOT_RESTORABLE,
        Verdict::Good | Verdict::Legacy => EXIT_VERIFY_GOOD,
        Verdict::Corrupt { .. } => EXIT_VERIFY_CORRUPT,
        Verdict::Incomplete { .. } => EXIT_VERIFY_INCOMPLETE,
    };
    // For a series whose snapshot is unusable: what a restart of the series would take.
    let fallback = match &located.series {
        Some(series) if !info.verdict.is_usable() && target.seq.is_none() => {
            Some(series.newest_good()?.map(|(seq, _)| seq))
        }
        _ => None,
    };
    // Whether the executable and libraries it records are still the same here; None
    // when it records none (self snapshots).
    let identity = snapshot::Manifest::read(&located.dir)
        .ok()
        .filter(|manifest| !manifest.identity.is_empty())
        .map(|manifest| manifest.identity_change());
    // Said of an intact snapshot that records what it needs of the node (criu), or is
    // refused; a damaged one is not restorable anywhere.
    let restorable = (component.is_some() && (identity.is_some() || refusal.is_some()))
        .then_some(refusal.is_none());
    let mut out = std::io::stdout().lock();
    if json {
        let mut object = info.to_json();
        object["version"] = 1.into();
        if let Some(restorable) = restorable {
            object["restorable_here"] = restorable.into();
            object["identity_change"] = identity.clone().flatten().into();
            object["restore_refusal"] = refusal.clone().into();
        }
        object["series"] = located.series.as_ref().map(|s| s.path().display().to_string()).into();
        if let Some(newest_good) = fallback {
            object["newest_good"] = newest_good.into();
        }
        let _ = writeln!(out, "{object}");
    } else {
        let _ = writeln!(out, "Snapshot: {}", info.path.display());
        if let Some(series) = &located.series {
            let _ = writeln!(out, "Series: {}", series.path().display());
        }
        if let Some(seq) = info.seq {
            let _ = writeln!(out, "Seq: {seq}");
        }
        let _ = writeln!(out, "Created: {}", info.created.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "Component: {}", info.component.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "Size: {}", info.size);
        let _ = writeln!(out, "State: {}", state_text(&info.verdict));
        match (restorable, &refusal) {
            (Some(true), _) => {
                let _ =
                    writeln!(out, "Restorable here: yes (same kernel, executable and libraries)");
            }
            (_, Some(why)) => {
                let _ = writeln!(out, "Restorable here: no: {why}");
            }
            _ => {}
        }
        match fallback {
            Some(Some(seq)) => {
                let _ = writeln!(out, "Newest good: {seq} (a restart of the series takes it)");
            }
            Some(None) => {
                let _ = writeln!(out, "Newest good: none (the series cannot be restarted)");
            }
            None => {}
        }
    }
    if info.verdict == Verdict::Legacy {
        eprintln!("opal-restart: note: {} has no manifest (1.6/1.7 layout): unchecked, a restart uses it as it is", info.path.display());
    }
    Ok(code)
}

/// `state` or `state: detail`.
fn state_text(verdict: &Verdict) -> String {
    match verdict.detail() {
        Some(detail) => format!("{}: {detail}", verdict.state()),
        None => verdict.state().to_string(),
    }
}

/// `--list` of both tools: the series `reference` (a name in `base`, or a path), or
/// every series in `base`. Text or one JSON object on stdout.
pub(crate) fn list(base: &Path, reference: Option<&str>, json: bool) -> Result<(), Error> {
    let listed = match reference {
        Some(reference) => {
            let path = if reference.contains('/') {
                PathBuf::from(reference)
            } else {
                base.join(reference)
            };
            vec![snapshot::list_series(&path)?]
        }
        None => snapshot::list_dir(base)?,
    };
    let mut out = std::io::stdout().lock();
    if json {
        let object = serde_json::json!({
            "version": 1,
            "series": listed.iter().map(SeriesInfo::to_json).collect::<Vec<_>>(),
        });
        let _ = writeln!(out, "{object}");
        return Ok(());
    }
    if listed.is_empty() {
        eprintln!("No snapshot series in {}", base.display());
    }
    for (i, series) in listed.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out);
        }
        let _ = write!(out, "{}", render_series(series));
    }
    Ok(())
}

/// One series as text: the original `--list` line (`Snapshot Ref.: <ref>\t[seqs]`),
/// the path, then a table of the snapshots.
fn render_series(series: &SeriesInfo) -> String {
    let name = series
        .path
        .file_name()
        .map_or_else(|| series.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let seqs: Vec<String> =
        series.snapshots.iter().filter_map(|s| s.seq.map(|seq| seq.to_string())).collect();
    let mut text = if series.flat {
        format!("Snapshot Ref.: {name}\t(1.6/1.7 layout)\n")
    } else {
        format!("Snapshot Ref.: {name}\t[{}]\n", seqs.join(", "))
    };
    text.push_str(&format!("Path: {}\n", series.path.display()));
    if series.snapshots.is_empty() {
        text.push_str("  (no published snapshot)\n");
        return text;
    }
    text.push_str(&format!(
        "  {:>5}  {:<24}  {:<9}  {:>12}  STATE\n",
        "SEQ", "CREATED (UTC)", "COMPONENT", "SIZE"
    ));
    for snapshot in &series.snapshots {
        text.push_str(&format!(
            "  {:>5}  {:<24}  {:<9}  {:>12}  {}\n",
            snapshot.seq.map_or_else(|| "-".to_string(), |seq| seq.to_string()),
            snapshot.created.as_deref().unwrap_or("-"),
            snapshot.component.as_deref().unwrap_or("-"),
            snapshot.size,
            state_text(&snapshot.verdict),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(seq: Option<u64>, verdict: Verdict) -> SnapshotInfo {
        SnapshotInfo {
            path: PathBuf::from(format!("/b/s/{}", seq.unwrap_or(0))),
            seq,
            created: seq.map(|_| "2024-05-01T10:00:00.000Z".to_string()),
            component: Some("self".into()),
            size: 1234,
            verdict,
        }
    }

    #[test]
    fn a_series_renders_as_a_table() {
        let series = SeriesInfo {
            path: PathBuf::from("/b/s"),
            flat: false,
            snapshots: vec![
                info(Some(0), Verdict::Good),
                info(Some(12), Verdict::Corrupt { file: "state".into(), reason: "missing".into() }),
            ],
        };
        let expected = [
            "Snapshot Ref.: s\t[0, 12]",
            "Path: /b/s",
            "    SEQ  CREATED (UTC)             COMPONENT          SIZE  STATE",
            "      0  2024-05-01T10:00:00.000Z  self               1234  good",
            "     12  2024-05-01T10:00:00.000Z  self               1234  corrupt: state: missing",
            "",
        ]
        .join("\n");
        assert_eq!(render_series(&series), expected);
    }

    #[test]
    fn flat_and_empty_series_render() {
        let flat = SeriesInfo {
            path: PathBuf::from("/b/old.ckpt"),
            flat: true,
            snapshots: vec![info(None, Verdict::Legacy)],
        };
        let text = render_series(&flat);
        assert!(
            text.starts_with("Snapshot Ref.: old.ckpt\t(1.6/1.7 layout)\nPath: /b/old.ckpt\n"),
            "{text}"
        );
        assert!(text.contains("      -  -                         self               1234  legacy: no opalcrs_manifest.json"), "{text}");
        let empty = SeriesInfo { path: PathBuf::from("/b/e"), flat: false, snapshots: vec![] };
        assert_eq!(
            render_series(&empty),
            "Snapshot Ref.: e\t[]\nPath: /b/e\n  (no published snapshot)\n"
        );
    }

    #[test]
    fn the_new_options_parse() {
        let args: Vec<std::ffi::OsString> =
            ["--verify", "-s", "3", "--json", "s"].iter().map(Into::into).collect();
        let parsed = super::super::parse(&args, OPTIONS).unwrap();
        assert!(parsed.has("verify") && parsed.has("json"));
        assert_eq!(
            (parsed.value("s"), parsed.operands.as_slice()),
            (Some("3"), &["s".to_string()][..])
        );
        let parsed = super::super::parse(&["-list".into()], OPTIONS).unwrap();
        assert!(parsed.has("list"));
    }
}

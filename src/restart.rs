//! Restarting from a snapshot: find it (series, numbered snapshot or an old flat
//! layout), read its metadata, carry out its `# MKDIR:`/`# TOUCH:` records and hand it
//! to the component that wrote it.

use crate::codes::*;
use crate::error::{Error, Result};
use crate::framework::{self, Component, RestartOutcome, RestartPlan};
use crate::owner::Owner;
use crate::params::Params;
use crate::snapshot::{self, Metadata};
use std::path::{Path, PathBuf};

/// What to restart: a series name (relative to `base`), or a path to a series, a
/// numbered snapshot or a flat old-layout snapshot directory.
pub struct Target {
    pub reference: String,
    pub base: PathBuf,
    pub seq: Option<u64>,
}

impl Target {
    pub fn path(path: PathBuf) -> Target {
        Target {
            reference: path.to_string_lossy().into_owned(),
            base: PathBuf::from("."),
            seq: None,
        }
    }
}

/// A snapshot chosen and read, ready for its component.
pub struct Prepared {
    pub plan: RestartPlan,
    pub component: &'static dyn Component,
    /// Newer snapshots of the series that were skipped, and why.
    pub skipped: Vec<(u64, String)>,
    /// Set when the snapshot has no manifest (1.6/1.7 layout).
    pub legacy: bool,
}

/// When a snapshot is checked against its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Before anything restarts; damaged newer snapshots of a series are skipped.
    First,
    /// While its component restores it, when the snapshot's files are all there with
    /// their sizes (checked first: cheap) and the component
    /// [can](Component::checks_while_restoring); otherwise first.
    WhileRestoring,
    /// Not again: the snapshot lies inside one whose manifest, which covers every byte
    /// of it, was just checked (a rank's in a global snapshot); its files' presence and
    /// sizes only, otherwise first.
    Covered,
}

/// Chooses and reads the snapshot to restart. `failed` are snapshots of the series
/// whose restore already failed because of them: they are skipped with that reason.
pub fn prepare(
    target: &Target,
    params: Params,
    verbose: bool,
    check: Check,
    failed: &[(u64, String)],
) -> Result<Prepared> {
    if check != Check::First {
        if let Some(prepared) = prepare_unchecked(target, &params, verbose, check) {
            return Ok(prepared);
        }
    }
    let resolved =
        snapshot::resolve_excluding(&target.reference, &target.base, target.seq, failed)?;
    let series = resolved.series.as_ref().map(|s| s.path().to_path_buf());
    let owner = owner_of(&resolved.dir, series.as_deref())?;
    let metadata = read_metadata(&resolved.dir)?;
    let component = component_of(&resolved.dir, &metadata)?;
    let legacy = matches!(resolved.verdict, snapshot::Verdict::Legacy);
    Ok(Prepared {
        plan: plan(resolved.dir, metadata, series, resolved.seq, owner, params, verbose, false),
        component,
        skipped: resolved.skipped,
        legacy,
    })
}

/// The snapshot `target` addresses before any fallback (the newest of a series), with
/// its contents not checked here, if its manifest lists exactly the files there with
/// their sizes and (`WhileRestoring`) its component checks while restoring. Anything
/// amiss leaves the choice to the checking path, which explains it.
fn prepare_unchecked(
    target: &Target,
    params: &Params,
    verbose: bool,
    check: Check,
) -> Option<Prepared> {
    let located = snapshot::locate(&target.reference, &target.base, target.seq).ok()?;
    if snapshot::verify_sizes(&located.dir) != snapshot::Verdict::Good {
        return None;
    }
    let series = located.series.as_ref().map(|s| s.path().to_path_buf());
    let owner = owner_of(&located.dir, series.as_deref()).ok()?;
    let metadata = read_metadata(&located.dir).ok()?;
    let component = component_of(&located.dir, &metadata).ok()?;
    let while_restoring = check == Check::WhileRestoring;
    if while_restoring && !component.checks_while_restoring() {
        return None;
    }
    Some(Prepared {
        plan: plan(
            located.dir,
            metadata,
            series,
            located.seq,
            owner,
            params.clone(),
            verbose,
            while_restoring,
        ),
        component,
        skipped: Vec::new(),
        legacy: false,
    })
}

/// The snapshot's owner (of its series too, the one found on disk, never the one its
/// metadata names), when the caller may act on it.
fn owner_of(dir: &Path, series: Option<&Path>) -> Result<Owner> {
    let owner = Owner::of_snapshot(dir, series)?;
    owner.check_caller(dir)?;
    Ok(owner)
}

pub(crate) fn read_metadata(dir: &Path) -> Result<Metadata> {
    let text = std::fs::read_to_string(dir.join(snapshot::METADATA_FILE)).map_err(|e| {
        Error::new(OPAL_ERR_NOT_FOUND, format!("snapshot {}: no metadata ({e})", dir.display()))
    })?;
    Ok(Metadata::parse(&text))
}

pub(crate) fn component_of(dir: &Path, metadata: &Metadata) -> Result<&'static dyn Component> {
    let name = metadata.component.as_deref().ok_or_else(|| {
        Error::new(
            OPAL_ERR_BAD_PARAM,
            format!("snapshot {}: metadata names no component", dir.display()),
        )
    })?;
    framework::by_name(name).ok_or_else(|| {
        Error::new(
            OPAL_ERR_NOT_AVAILABLE,
            format!("snapshot {} was written by component '{name}', which this library does not provide", dir.display()),
        )
    })
}

#[allow(clippy::too_many_arguments)] // one plain constructor, called twice
fn plan(
    dir: PathBuf,
    metadata: Metadata,
    series: Option<PathBuf>,
    seq: Option<u64>,
    owner: Owner,
    params: Params,
    verbose: bool,
    unchecked: bool,
) -> RestartPlan {
    let series = series.or_else(|| metadata.series.clone());
    RestartPlan {
        dir,
        metadata,
        series,
        seq,
        owner,
        params,
        verbose,
        unchecked,
        end_with_parent: false,
    }
}

/// Which step of [`run`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finding, checking or reading the snapshot.
    Choose,
    /// Its records, or its component's restart.
    Start,
}

/// Chooses the snapshot, lets `before_start` announce it and say whether the restarted
/// program is to be a child (`spawn_child`), creates the records and restarts it.
///
/// A snapshot that is found at fault while it is restored (damage its check found, or
/// a stalled restore) never ran: a series (without `-s`) then falls back to the next
/// older good snapshot, naming the one skipped and why; a single snapshot fails, as
/// unusable (its check names the damage) or, if it verifies, as [`RestartOutcome::Rejected`].
/// Failures that are not the snapshot's (no privilege, its PIDs taken) end the restart.
pub fn run(
    target: &Target,
    params: &Params,
    verbose: bool,
    before_start: &mut dyn FnMut(&Prepared) -> bool,
) -> std::result::Result<RestartOutcome, (Step, Error)> {
    let may_fall_back =
        target.seq.is_none() && snapshot::names_a_series(&target.reference, &target.base);
    let mut check = Check::WhileRestoring;
    let mut failed: Vec<(u64, String)> = Vec::new();
    loop {
        let prepared = prepare(target, params.clone(), verbose, check, &failed)
            .map_err(|e| (Step::Choose, e))?;
        let spawn_child = before_start(&prepared);
        apply_records(&prepared.plan).map_err(|e| (Step::Start, e))?;
        let why = match prepared.component.restart(&prepared.plan, spawn_child) {
            Ok(RestartOutcome::Rejected(why)) => why,
            outcome => return outcome.map_err(|e| (Step::Start, e)),
        };
        let dir = &prepared.plan.dir;
        log::debug!(target: "crs", "crs: {} rejected while restoring: {why}", dir.display());
        match prepared.plan.seq {
            Some(seq) if may_fall_back && !failed.iter().any(|(done, _)| *done == seq) => {
                failed.push((seq, why));
                check = Check::First;
            }
            _ => {
                snapshot::usable_verdict(dir).map_err(|e| (Step::Choose, e))?;
                return Ok(RestartOutcome::Rejected(why));
            }
        }
    }
}

/// Creates the directories and files the snapshot's metadata asks for, as its owner.
pub fn apply_records(plan: &RestartPlan) -> Result<()> {
    let paths = |records: &[String]| records.iter().map(PathBuf::from).collect::<Vec<_>>();
    let (dirs, files) = (paths(&plan.metadata.mkdir), paths(&plan.metadata.touch));
    plan.owner.create_as_owner(&dirs, &files)
}

/// Restarts `target` with default parameters (used by `opal_crs.crs_restart`).
pub fn restart(target: &Target, spawn_child: bool, verbose: bool) -> Result<RestartOutcome> {
    let params = crate::runtime::load_params(Vec::new())?;
    run(target, &params, verbose, &mut |_| spawn_child).map_err(|(_, e)| e)
}

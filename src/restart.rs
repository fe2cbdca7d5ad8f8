//! Restarting from a snapshot: find it (series, numbered snapshot or an old flat
//! layout), read its metadata, carry out its `# MKDIR:`/`# TOUCH:` records and hand it
//! to the component that wrote it.

use crate::codes::*;
use crate::error::{Error, Result};
use crate::framework::{self, Component, RestartOutcome, RestartPlan};
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

pub fn prepare(target: &Target, params: Params, verbose: bool) -> Result<Prepared> {
    let resolved = snapshot::resolve(&target.reference, &target.base, target.seq)?;
    let meta_path = resolved.dir.join(snapshot::METADATA_FILE);
    let text = std::fs::read_to_string(&meta_path).map_err(|e| {
        Error::new(
            OPAL_ERR_NOT_FOUND,
            format!("snapshot {}: no metadata ({e})", resolved.dir.display()),
        )
    })?;
    let metadata = Metadata::parse(&text);
    let name = metadata.component.clone().ok_or_else(|| {
        Error::new(
            OPAL_ERR_BAD_PARAM,
            format!("snapshot {}: metadata names no component", resolved.dir.display()),
        )
    })?;
    let component = framework::by_name(&name).ok_or_else(|| {
        Error::new(
            OPAL_ERR_NOT_AVAILABLE,
            format!("snapshot {} was written by component '{name}', which this library does not provide", resolved.dir.display()),
        )
    })?;
    let legacy = matches!(resolved.verdict, snapshot::Verdict::Legacy);
    let series = resolved
        .series
        .as_ref()
        .map(|s| s.path().to_path_buf())
        .or_else(|| metadata.series.clone());
    Ok(Prepared {
        plan: RestartPlan {
            dir: resolved.dir,
            metadata,
            series,
            seq: resolved.seq,
            params,
            verbose,
        },
        component,
        skipped: resolved.skipped,
        legacy,
    })
}

/// Creates the directories and files the snapshot's metadata asks for.
pub fn apply_records(metadata: &Metadata) -> Result<()> {
    for dir in &metadata.mkdir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("# MKDIR: {dir}"), e))?;
    }
    for file in &metadata.touch {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(file))
            .map_err(|e| Error::io(format!("# TOUCH: {file}"), e))?;
    }
    Ok(())
}

/// Restarts `target` with default parameters (used by `opal_crs.crs_restart`).
pub fn restart(target: &Target, spawn_child: bool, verbose: bool) -> Result<RestartOutcome> {
    let prepared = prepare(target, crate::runtime::load_params(Vec::new())?, verbose)?;
    apply_records(&prepared.plan.metadata)?;
    prepared.component.restart(&prepared.plan, spawn_child)
}

//! What `--list` and `--verify` report about snapshots: each one's sequence number,
//! creation time, component, size and verdict, for one series or for every series in a
//! directory.

use super::manifest::{verify, Manifest, Verdict};
use super::metadata::{Metadata, METADATA_FILE};
use super::series::{parse_seq, Series, LOCK_FILE};
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// One snapshot as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    /// None for a 1.6/1.7 flat snapshot directory.
    pub seq: Option<u64>,
    /// The manifest's creation time (RFC 3339, UTC); None without a readable manifest.
    pub created: Option<String>,
    /// From the manifest, else from the metadata.
    pub component: Option<String>,
    /// Sum of the sizes of the regular files in the directory tree, as on disk now.
    pub size: u64,
    pub verdict: Verdict,
}

impl SnapshotInfo {
    /// Verifies `dir` and reads what a listing shows about it. Never fails: what cannot
    /// be read is missing from the result and explained by the verdict.
    pub fn inspect(dir: &Path, seq: Option<u64>) -> SnapshotInfo {
        let verdict = verify(dir);
        let manifest = Manifest::read(dir).ok();
        let component = manifest.as_ref().map(|m| m.component.clone()).or_else(|| {
            fs::read_to_string(dir.join(METADATA_FILE))
                .ok()
                .and_then(|text| Metadata::parse(&text).component)
        });
        SnapshotInfo {
            path: dir.to_path_buf(),
            seq,
            created: manifest.map(|m| m.created),
            component,
            size: tree_size(dir),
            verdict,
        }
    }

    /// `{"seq", "path", "created", "component", "size", "state", "detail"}`, plus
    /// `"file"` for a corrupt snapshot.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "seq": self.seq,
            "path": self.path.display().to_string(),
            "created": self.created,
            "component": self.component,
            "size": self.size,
            "state": self.verdict.state(),
            "detail": self.verdict.detail(),
        });
        if let Verdict::Corrupt { file, .. } = &self.verdict {
            object["file"] = file.clone().into();
        }
        object
    }
}

/// A series and its published snapshots, oldest first; or a flat 1.6/1.7 snapshot
/// directory, listed as a series of that one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    pub path: PathBuf,
    pub flat: bool,
    pub snapshots: Vec<SnapshotInfo>,
}

impl SeriesInfo {
    /// `{"path", "layout": "series"|"flat", "snapshots": [...]}`.
    pub fn to_json(&self) -> Value {
        json!({
            "path": self.path.display().to_string(),
            "layout": if self.flat { "flat" } else { "series" },
            "snapshots": self.snapshots.iter().map(SnapshotInfo::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Lists the series at `path`. A directory that is itself one snapshot is listed alone:
/// a numbered one as its series with only that snapshot, a flat one as `flat`.
pub fn list_series(path: &Path) -> Result<SeriesInfo> {
    let meta =
        fs::metadata(path).map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::new(
            crate::codes::OPAL_ERR_NOT_FOUND,
            format!("{}: not a snapshot series: not a directory", path.display()),
        ));
    }
    if super::holds_snapshot(path) {
        let numbered = path.file_name().and_then(|name| name.to_str()).and_then(parse_seq);
        return Ok(match (numbered, path.parent()) {
            (Some(seq), Some(parent)) => SeriesInfo {
                path: parent.to_path_buf(),
                flat: false,
                snapshots: vec![SnapshotInfo::inspect(path, Some(seq))],
            },
            _ => SeriesInfo {
                path: path.to_path_buf(),
                flat: true,
                snapshots: vec![SnapshotInfo::inspect(path, None)],
            },
        });
    }
    let series = Series::at(path);
    let snapshots = series
        .snapshots()?
        .into_iter()
        .map(|seq| SnapshotInfo::inspect(&series.snapshot_dir(seq), Some(seq)))
        .collect();
    Ok(SeriesInfo { path: path.to_path_buf(), flat: false, snapshots })
}

/// Lists every series in `base` (by name): each directory that holds a `.lock` or a
/// numbered directory with a snapshot's files, and each flat 1.6/1.7 snapshot
/// directory. Symbolic links are not followed and unreadable directories are passed over.
pub fn list_dir(base: &Path) -> Result<Vec<SeriesInfo>> {
    let listing_failed = |e| Error::io(format!("cannot list {}", base.display()), e);
    let mut dirs = Vec::new();
    for entry in fs::read_dir(base).map_err(listing_failed)? {
        let entry = entry.map_err(listing_failed)?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs
        .into_iter()
        .filter(|dir| super::holds_snapshot(dir) || looks_like_series(dir))
        .filter_map(|dir| match list_series(&dir) {
            Ok(info) => Some(info),
            Err(e) => {
                log::debug!(target: "crs", "crs: not listing {}: {e}", dir.display());
                None
            }
        })
        .collect())
}

fn looks_like_series(dir: &Path) -> bool {
    if fs::symlink_metadata(dir.join(LOCK_FILE)).is_ok() {
        return true;
    }
    let Ok(entries) = fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        entry.file_name().to_str().and_then(parse_seq).is_some()
            && entry.file_type().is_ok_and(|kind| kind.is_dir())
            && super::holds_snapshot(&entry.path())
    })
}

/// Sum of the sizes of the regular files under `dir`; symbolic links are not followed
/// and what cannot be read counts 0.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) if meta.is_file() => total += meta.len(),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::MANIFEST_FILE;
    use crate::snapshot::test_support::{publish_snapshot, TempDir};

    #[test]
    fn a_series_lists_every_snapshot_with_its_state() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        for _ in 0..3 {
            publish_snapshot(&series, b"payload", 0);
        }
        fs::write(series.snapshot_dir(1).join("payload.img"), b"tampered").unwrap();
        fs::create_dir(series.snapshot_dir(3)).unwrap();
        let info = list_series(series.path()).unwrap();
        assert_eq!(info.path, series.path());
        assert!(!info.flat);
        let states: Vec<(Option<u64>, &str)> =
            info.snapshots.iter().map(|s| (s.seq, s.verdict.state())).collect();
        assert_eq!(
            states,
            [(Some(0), "good"), (Some(1), "corrupt"), (Some(2), "good"), (Some(3), "incomplete")]
        );
        let good = &info.snapshots[0];
        assert_eq!(good.component.as_deref(), Some("self"));
        let manifest = Manifest::read(&good.path).unwrap();
        assert_eq!(good.created.as_ref(), Some(&manifest.created));
        let on_disk = fs::metadata(good.path.join(MANIFEST_FILE)).unwrap().len()
            + manifest.files.iter().map(|f| f.size).sum::<u64>();
        assert_eq!(good.size, on_disk);
        assert_eq!(info.snapshots[3].created, None);
        assert_eq!(info.snapshots[3].size, 0);

        let value = info.to_json();
        assert_eq!(value["layout"], "series");
        let corrupt = &value["snapshots"][1];
        assert_eq!(corrupt["state"], "corrupt");
        assert_eq!(corrupt["file"], "payload.img");
        assert_eq!(corrupt["detail"], "payload.img: size 8, expected 7");
        assert_eq!(value["snapshots"][0]["detail"], Value::Null);
        assert_eq!(value["snapshots"][0]["seq"], 0);
    }

    #[test]
    fn a_single_snapshot_lists_alone() {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        publish_snapshot(&series, b"a", 0);
        publish_snapshot(&series, b"b", 0);
        let info = list_series(&series.snapshot_dir(1)).unwrap();
        assert_eq!((info.path.as_path(), info.snapshots.len()), (series.path(), 1));
        assert_eq!(info.snapshots[0].seq, Some(1));

        let flat = base.path().join("old.ckpt");
        fs::create_dir(&flat).unwrap();
        fs::write(flat.join(METADATA_FILE), "# PID: 7\n# Component: self\n").unwrap();
        let info = list_series(&flat).unwrap();
        assert!(info.flat);
        let only = &info.snapshots[0];
        assert_eq!((only.seq, only.verdict.state()), (None, "legacy"));
        assert_eq!(only.component.as_deref(), Some("self"));
        assert!(list_series(&base.path().join("missing")).is_err());
    }

    #[test]
    fn a_directory_lists_what_looks_like_a_series() {
        let base = TempDir::new();
        let b = Series::open(base.path(), "b").unwrap();
        publish_snapshot(&b, b"x", 0);
        // Created by a checkpoint that has not published yet: only the lock.
        Series::open(base.path(), "a").unwrap().begin(std::process::id() as i32).unwrap();
        fs::create_dir_all(base.path().join("unrelated/1")).unwrap();
        fs::create_dir_all(base.path().join("flat")).unwrap();
        fs::write(base.path().join("flat").join(METADATA_FILE), "# PID: 1\n").unwrap();
        fs::write(base.path().join("file"), b"").unwrap();
        std::os::unix::fs::symlink(b.path(), base.path().join("link")).unwrap();
        let listed = list_dir(base.path()).unwrap();
        let names: Vec<(String, usize, bool)> = listed
            .iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, s.snapshots.len(), s.flat)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_string(), 0, false),
                ("b".to_string(), 1, false),
                ("flat".to_string(), 1, true)
            ]
        );
        assert!(list_dir(&base.path().join("missing")).is_err());
    }
}

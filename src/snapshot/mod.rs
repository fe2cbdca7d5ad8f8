//! The on-disk snapshot store: series of numbered, atomically published snapshots
//! ([`series`]), the original metadata file ([`metadata`]), the manifest that lets a
//! damaged snapshot be found before a restart ([`manifest`]), and [`resolve`], which
//! turns what the user named at restart into one snapshot directory.

pub mod list;
pub mod manifest;
pub mod metadata;
pub(crate) mod prehashed;
pub mod series;

pub use list::{list_dir, list_series, SeriesInfo, SnapshotInfo};
pub use manifest::{
    hash_file, restore_log_name, verify, verify_sizes, FileEntry, IdentityEntry, Manifest, Verdict,
    HASH_ALGORITHM, MANIFEST_FILE, MANIFEST_FORMAT,
};
pub use metadata::{extract_expected_component, read_token, Metadata, METADATA_FILE};
pub use series::{
    check_series_name, PendingSnapshot, PublishOptions, Published, Series, Skipped, LOCK_FILE,
};

use crate::codes;
use crate::error::{Error, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The snapshot chosen for a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The snapshot directory to restart from.
    pub dir: PathBuf,
    /// The series it belongs to; None for a legacy flat snapshot.
    pub series: Option<Series>,
    pub seq: Option<u64>,
    /// Newer snapshots of the series that were skipped.
    pub skipped: Skipped,
    pub verdict: Verdict,
}

/// Finds the snapshot to restart from.
///
/// `reference` is a path when it contains a `/` (relative to the working directory unless
/// absolute), otherwise a name in `base_dir` (1.6 `-w DIR REF`, 1.10 `-l LOC -r REF`).
/// It may name a series (the newest good snapshot is taken, or number `seq`), one
/// numbered snapshot (`-l <series> -r <seq>`), or a 1.6/1.7 snapshot directory holding
/// `snapshot_meta.data` directly. A snapshot that does not verify is never returned.
pub fn resolve(reference: &str, base_dir: &Path, seq: Option<u64>) -> Result<Resolved> {
    resolve_excluding(reference, base_dir, seq, &[])
}

/// [`resolve`], where the snapshots of the series in `excluded` (whose restore failed)
/// are skipped for the reason given there.
pub fn resolve_excluding(
    reference: &str,
    base_dir: &Path,
    seq: Option<u64>,
    excluded: &[(u64, String)],
) -> Result<Resolved> {
    let path = reference_dir(reference, base_dir)?;
    if holds_snapshot(&path) {
        let (series, numbered) = single_snapshot(&path, seq)?;
        let verdict = usable_verdict(&path)?;
        Ok(Resolved { dir: path, series, seq: numbered, skipped: Vec::new(), verdict })
    } else {
        resolve_series(Series::at(&path), seq, excluded)
    }
}

/// Whether `reference` (as for [`resolve`]) names a series, of which an older snapshot
/// can stand in for a newer one that fails, rather than one snapshot.
pub fn names_a_series(reference: &str, base_dir: &Path) -> bool {
    reference_dir(reference, base_dir).is_ok_and(|path| !holds_snapshot(&path))
}

/// One snapshot as addressed by the user, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub dir: PathBuf,
    /// The series it belongs to; None for a legacy flat snapshot.
    pub series: Option<Series>,
    pub seq: Option<u64>,
}

/// The snapshot that `reference` (as for [`resolve`]) addresses, without verifying it and
/// without falling back to an older one: for a series, snapshot `seq`, or else the
/// newest published one whatever its state. This is what `opal-restart --verify` checks.
pub fn locate(reference: &str, base_dir: &Path, seq: Option<u64>) -> Result<Located> {
    let path = reference_dir(reference, base_dir)?;
    if holds_snapshot(&path) {
        let (series, numbered) = single_snapshot(&path, seq)?;
        return Ok(Located { dir: path, series, seq: numbered });
    }
    let series = Series::at(&path);
    let published = series.snapshots()?;
    let wanted = match seq {
        Some(wanted) if published.contains(&wanted) => wanted,
        Some(wanted) => return Err(not_found(&series.snapshot_dir(wanted), "no such snapshot")),
        None => *published.last().ok_or_else(|| {
            not_found(
                series.path(),
                &format!("not a snapshot: no {METADATA_FILE} and no numbered snapshots"),
            )
        })?,
    };
    Ok(Located { dir: series.snapshot_dir(wanted), series: Some(series), seq: Some(wanted) })
}

/// The existing directory that `reference` names.
fn reference_dir(reference: &str, base_dir: &Path) -> Result<PathBuf> {
    if reference.is_empty() {
        return Err(Error::new(codes::OPAL_ERR_BAD_PARAM, "no snapshot reference given"));
    }
    let path =
        if reference.contains('/') { PathBuf::from(reference) } else { base_dir.join(reference) };
    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(not_found(&path, "not a snapshot: not a directory")),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(not_found(&path, "no such snapshot")),
        Err(e) => Err(Error::io(format!("cannot use snapshot {}", path.display()), e)),
    }
}

/// For a directory that is itself one snapshot, numbered or legacy: its series and
/// number, after checking that `seq`, if given, agrees.
fn single_snapshot(dir: &Path, seq: Option<u64>) -> Result<(Option<Series>, Option<u64>)> {
    let numbered = dir.file_name().and_then(|name| name.to_str()).and_then(series::parse_seq);
    let series = match (numbered, dir.parent()) {
        (Some(_), Some(parent)) => Some(Series::at(parent)),
        _ => None,
    };
    match (seq, numbered) {
        (Some(wanted), Some(number)) if wanted != number => {
            Err(bad_seq(dir, &format!("it is snapshot {number}, not {wanted}")))
        }
        (Some(_), None) => Err(bad_seq(dir, "it is a single snapshot, not a series")),
        _ => Ok((series, numbered)),
    }
}

fn resolve_series(
    series: Series,
    seq: Option<u64>,
    excluded: &[(u64, String)],
) -> Result<Resolved> {
    if let Some(wanted) = seq {
        let dir = series.snapshot_dir(wanted);
        if !series.snapshots()?.contains(&wanted) {
            return Err(not_found(&dir, "no such snapshot"));
        }
        let verdict = usable_verdict(&dir)?;
        return Ok(Resolved {
            dir,
            series: Some(series),
            seq: Some(wanted),
            skipped: Vec::new(),
            verdict,
        });
    }
    let scan = series.scan_newest_good(excluded)?;
    match scan.found {
        Some((seq, verdict)) => Ok(Resolved {
            dir: series.snapshot_dir(seq),
            series: Some(series),
            seq: Some(seq),
            skipped: scan.skipped,
            verdict,
        }),
        None if scan.skipped.is_empty() => Err(not_found(
            series.path(),
            &format!("not a snapshot: no {METADATA_FILE} and no numbered snapshots"),
        )),
        None => {
            let reasons: Vec<String> =
                scan.skipped.iter().map(|(seq, why)| format!("{seq}: {why}")).collect();
            Err(Error::new(
                codes::OPAL_ERR_NOT_FOUND,
                format!(
                    "series {} has no good snapshot ({} skipped: {})",
                    series.path().display(),
                    scan.skipped.len(),
                    reasons.join("; ")
                ),
            ))
        }
    }
}

/// Whether `dir` holds a snapshot's files directly (rather than numbered snapshots).
pub(crate) fn holds_snapshot(dir: &Path) -> bool {
    [METADATA_FILE, MANIFEST_FILE].iter().any(|file| fs::symlink_metadata(dir.join(file)).is_ok())
}

/// The verdict on `dir`, or an error naming the snapshot and what is wrong with it.
pub fn usable_verdict(dir: &Path) -> Result<Verdict> {
    let verdict = verify(dir);
    if verdict.is_usable() {
        Ok(verdict)
    } else {
        Err(Error::new(
            codes::OPAL_ERROR,
            format!("snapshot {} cannot be used: {verdict}", dir.display()),
        ))
    }
}

fn not_found(path: &Path, why: &str) -> Error {
    Error::new(codes::OPAL_ERR_NOT_FOUND, format!("{}: {why}", path.display()))
}

fn bad_seq(dir: &Path, why: &str) -> Error {
    Error::new(
        codes::OPAL_ERR_BAD_PARAM,
        format!("cannot select a sequence number in {}: {why}", dir.display()),
    )
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Metadata, PublishOptions, Published, Series, METADATA_FILE};
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temporary directory, removed when dropped.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "opalcrs-snapshot-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            // Left over by an earlier run that had our PID.
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            TempDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub fn publish_options(keep: u64) -> PublishOptions {
        PublishOptions {
            fsync: false,
            keep,
            component: "self".into(),
            pid: 4242,
            host: "node1".into(),
            identity: Vec::new(),
        }
    }

    /// Publishes the next snapshot of `series`: metadata and `payload.img`.
    pub fn publish_snapshot(series: &Series, payload: &[u8], keep: u64) -> Published {
        let pending = series.begin(std::process::id() as i32).unwrap();
        let metadata =
            Metadata { pid: Some(4242), component: Some("self".into()), ..Metadata::default() };
        fs::write(pending.dir.join(METADATA_FILE), metadata.render().unwrap()).unwrap();
        fs::write(pending.dir.join("payload.img"), payload).unwrap();
        pending.publish(publish_options(keep)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{publish_snapshot, TempDir};
    use super::*;

    /// A series `s` in a fresh base directory with snapshots 0, 1 and 2.
    fn three_snapshots() -> (TempDir, Series) {
        let base = TempDir::new();
        let series = Series::open(base.path(), "s").unwrap();
        for _ in 0..3 {
            publish_snapshot(&series, b"payload", 0);
        }
        (base, series)
    }

    fn corrupt(series: &Series, seq: u64) {
        fs::write(series.snapshot_dir(seq).join("payload.img"), b"tampered").unwrap();
    }

    #[test]
    fn a_series_name_resolves_to_its_newest_snapshot() {
        let (base, series) = three_snapshots();
        let resolved = resolve("s", base.path(), None).unwrap();
        assert_eq!(
            resolved,
            Resolved {
                dir: series.snapshot_dir(2),
                series: Some(series.clone()),
                seq: Some(2),
                skipped: Vec::new(),
                verdict: Verdict::Good
            }
        );
        // The same series by its path; the base directory does not matter then.
        let by_path =
            resolve(series.path().to_str().unwrap(), Path::new("/nonexistent"), None).unwrap();
        assert_eq!(by_path, resolved);
    }

    #[test]
    fn a_numbered_snapshot_resolves_to_itself() {
        let (base, series) = three_snapshots();
        let dir = series.snapshot_dir(1);
        let resolved = resolve(dir.to_str().unwrap(), base.path(), None).unwrap();
        assert_eq!(
            (resolved.dir, resolved.series, resolved.seq),
            (dir.clone(), Some(series.clone()), Some(1))
        );
        // 1.10 style: -l <series> -r <seq>.
        assert_eq!(resolve("1", series.path(), None).unwrap().dir, dir);
        assert_eq!(resolve(dir.to_str().unwrap(), base.path(), Some(1)).unwrap().seq, Some(1));
        let err = resolve(dir.to_str().unwrap(), base.path(), Some(2)).unwrap_err();
        assert!(err.message().contains("it is snapshot 1, not 2"), "{err}");
    }

    #[test]
    fn a_legacy_flat_snapshot_resolves() {
        let base = TempDir::new();
        let legacy = base.path().join("opal_snapshot_77.ckpt");
        fs::create_dir(&legacy).unwrap();
        fs::write(
            legacy.join(METADATA_FILE),
            "# PID: 77\n# OPAL CRS Component: self\n# CONTEXT: ./app\n",
        )
        .unwrap();
        let resolved = resolve("opal_snapshot_77.ckpt", base.path(), None).unwrap();
        assert_eq!(
            resolved,
            Resolved {
                dir: legacy.clone(),
                series: None,
                seq: None,
                skipped: Vec::new(),
                verdict: Verdict::Legacy
            }
        );
        let err = resolve("opal_snapshot_77.ckpt", base.path(), Some(0)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
        assert!(err.message().contains("not a series"), "{err}");
    }

    #[test]
    fn a_sequence_number_selects_that_snapshot_only() {
        let (base, series) = three_snapshots();
        assert_eq!(resolve("s", base.path(), Some(0)).unwrap().dir, series.snapshot_dir(0));
        corrupt(&series, 1);
        let err = resolve("s", base.path(), Some(1)).unwrap_err();
        let expected = format!(
            "snapshot {} cannot be used: corrupt: payload.img: size 8, expected 7",
            series.snapshot_dir(1).display()
        );
        assert_eq!(err.message(), expected);
        let err = resolve("s", base.path(), Some(9)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert_eq!(
            err.message(),
            format!("{}: no such snapshot", series.snapshot_dir(9).display())
        );
    }

    #[test]
    fn damaged_newer_snapshots_are_skipped_with_their_reason() {
        let (base, series) = three_snapshots();
        corrupt(&series, 2);
        fs::remove_dir_all(series.snapshot_dir(1)).unwrap();
        fs::create_dir(series.snapshot_dir(1)).unwrap();
        let resolved = resolve("s", base.path(), None).unwrap();
        assert_eq!(resolved.seq, Some(0));
        let skipped: Vec<u64> = resolved.skipped.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(skipped, vec![2, 1]);
        assert!(
            resolved.skipped[0].1.starts_with("corrupt: payload.img"),
            "{:?}",
            resolved.skipped
        );
        assert!(resolved.skipped[1].1.starts_with("incomplete"), "{:?}", resolved.skipped);

        corrupt(&series, 0);
        let err = resolve("s", base.path(), None).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        let expected = format!(
            "series {} has no good snapshot (3 skipped: 2: corrupt",
            series.path().display()
        );
        assert!(err.message().starts_with(&expected), "{err}");
    }

    #[test]
    fn locate_addresses_without_verifying_or_falling_back() {
        let (base, series) = three_snapshots();
        corrupt(&series, 2);
        let newest = locate("s", base.path(), None).unwrap();
        assert_eq!(
            newest,
            Located { dir: series.snapshot_dir(2), series: Some(series.clone()), seq: Some(2) }
        );
        assert_eq!(locate("s", base.path(), Some(0)).unwrap().dir, series.snapshot_dir(0));
        let one = series.snapshot_dir(1);
        let by_path = locate(one.to_str().unwrap(), base.path(), None).unwrap();
        assert_eq!((by_path.series, by_path.seq), (Some(series.clone()), Some(1)));
        assert!(locate(one.to_str().unwrap(), base.path(), Some(2))
            .unwrap_err()
            .message()
            .contains("it is snapshot 1, not 2"));
        let err = locate("s", base.path(), Some(7)).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert!(err.message().ends_with("7: no such snapshot"), "{err}");

        Series::open(base.path(), "empty").unwrap();
        let err = locate("empty", base.path(), None).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert!(err.message().contains("no numbered snapshots"), "{err}");
        assert!(locate("missing", base.path(), None).is_err());
    }

    #[test]
    fn references_that_name_no_snapshot_are_errors() {
        let base = TempDir::new();
        let err = resolve("missing", base.path(), None).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert_eq!(
            err.message(),
            format!("{}: no such snapshot", base.path().join("missing").display())
        );

        fs::create_dir(base.path().join("empty")).unwrap();
        let err = resolve("empty", base.path(), None).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert!(err.message().contains("not a snapshot: no snapshot_meta.data"), "{err}");

        fs::write(base.path().join("file"), b"").unwrap();
        assert!(resolve("file", base.path(), None)
            .unwrap_err()
            .message()
            .contains("not a directory"));
        assert_eq!(resolve("", base.path(), None).unwrap_err().code(), codes::OPAL_ERR_BAD_PARAM);
    }
}

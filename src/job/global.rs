//! The global series of a job: `<dir>/ompi_global_snapshot_<launcher pid>.ckpt/<seq>/`
//! holds `opal_snapshot_<rank>.ckpt/` for every rank and `global_snapshot_meta.data`.
//! It is an ordinary series of the store (`snapshot::Series`): a global snapshot is
//! written under a temporary name, each rank's own snapshot is a one-snapshot series
//! inside it, and it is published by one rename with one manifest over every file of
//! every rank (their own manifests included) only when all ranks' snapshots are
//! complete. One damaged rank therefore makes the whole global snapshot fail its check.
//!
//! A criu job across nodes holds one image per node instead, `opal_node_<node>.ckpt/0/`
//! (a series of one, like a rank's), and the metadata says which ranks each holds.

use crate::error::{Error, Result};
use crate::snapshot::metadata::read_token;
use std::path::{Path, PathBuf};

/// The global metadata file, in each numbered global snapshot.
pub(crate) const GLOBAL_METADATA_FILE: &str = "global_snapshot_meta.data";

const TOKEN_SEQ: &str = "# Seq: ";
const TOKEN_TIMESTAMP: &str = "# Timestamp: ";
const TOKEN_PROCESS: &str = "# Process: ";
const TOKEN_COMPONENT: &str = "# OPAL CRS Component: ";
const TOKEN_LAUNCHER: &str = "# OPALCRS Launcher: ";
const TOKEN_SIZE: &str = "# OPALCRS Ranks: ";
const TOKEN_NODE: &str = "# OPALCRS Node: ";

/// The default name of a job's global series.
pub fn default_series_name(launcher_pid: i32) -> String {
    format!("ompi_global_snapshot_{launcher_pid}.ckpt")
}

/// The name of rank `rank`'s own snapshot (a series of one) in a global snapshot.
pub fn rank_series_name(rank: usize) -> String {
    format!("opal_snapshot_{rank}.ckpt")
}

/// Rank `rank`'s snapshot directory in the global snapshot `global`.
pub fn rank_snapshot(global: &Path, rank: usize) -> PathBuf {
    global.join(rank_series_name(rank)).join("0")
}

/// The name of node `node`'s image (a series of one) in a criu global snapshot.
pub fn node_series_name(node: usize) -> String {
    format!("opal_node_{node}.ckpt")
}

/// Node `node`'s image directory in the global snapshot `global`.
pub fn node_snapshot(global: &Path, node: usize) -> PathBuf {
    global.join(node_series_name(node)).join("0")
}

/// What `global_snapshot_meta.data` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalMetadata {
    pub seq: u64,
    /// `ctime`-like text of when it was taken.
    pub timestamp: String,
    /// The component every rank used.
    pub component: String,
    pub launcher_pid: i32,
    /// The PID of each rank, by rank.
    pub ranks: Vec<i32>,
    /// criu across nodes: the ranks each node's image holds, by node; empty otherwise.
    pub nodes: Vec<std::ops::Range<usize>>,
}

impl GlobalMetadata {
    /// The file: the original's tokens (`# Seq:`, `# Timestamp:`, one `# Process:` per
    /// rank as `<rank> <pid>`, `# OPAL CRS Component:`), then ours (one `# OPALCRS
    /// Node: <node> <first rank> <ranks>` per node image).
    pub fn render(&self) -> String {
        let mut text = format!("{TOKEN_SEQ}{}\n{TOKEN_TIMESTAMP}{}\n", self.seq, self.timestamp);
        for (rank, pid) in self.ranks.iter().enumerate() {
            text.push_str(&format!("{TOKEN_PROCESS}{rank} {pid}\n"));
        }
        text.push_str(&format!("{TOKEN_COMPONENT}{}\n", self.component));
        text.push_str(&format!("{TOKEN_LAUNCHER}{}\n", self.launcher_pid));
        text.push_str(&format!("{TOKEN_SIZE}{}\n", self.ranks.len()));
        for (node, ranks) in self.nodes.iter().enumerate() {
            text.push_str(&format!("{TOKEN_NODE}{node} {} {}\n", ranks.start, ranks.len()));
        }
        text
    }

    /// Reads the file of the global snapshot `dir`, checking that it names every rank
    /// once, in order.
    pub fn read(dir: &Path) -> Result<GlobalMetadata> {
        let path = dir.join(GLOBAL_METADATA_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        GlobalMetadata::parse(&text)
            .map_err(|why| Error::msg(format!("global snapshot {}: {why}", dir.display())))
    }

    fn parse(text: &str) -> std::result::Result<GlobalMetadata, String> {
        let one = |token: &str| -> std::result::Result<String, String> {
            read_token(text, token)
                .first()
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("no {}", token.trim_end()))
        };
        let number = |token: &str| -> std::result::Result<i64, String> {
            one(token)?.parse().map_err(|_| format!("a bad {}", token.trim_end()))
        };
        let mut ranks = Vec::new();
        for (expected, line) in read_token(text, TOKEN_PROCESS).iter().enumerate() {
            let mut words = line.split_whitespace().map(str::parse::<i64>);
            match (words.next(), words.next()) {
                (Some(Ok(rank)), Some(Ok(pid))) if rank == expected as i64 && pid > 0 => {
                    ranks.push(pid as i32)
                }
                _ => return Err(format!("a bad {}line {line:?}", TOKEN_PROCESS)),
            }
        }
        let size = number(TOKEN_SIZE)?;
        if ranks.is_empty() || size != ranks.len() as i64 {
            return Err(format!("{size} ranks, but {} processes listed", ranks.len()));
        }
        // Node images, if any, hold every rank once, in order.
        let mut nodes: Vec<std::ops::Range<usize>> = Vec::new();
        for (expected, line) in read_token(text, TOKEN_NODE).iter().enumerate() {
            let words: Vec<Option<usize>> =
                line.split_whitespace().map(|w| w.parse().ok()).collect();
            let next = nodes.last().map_or(0, |last| last.end);
            match words[..] {
                [Some(node), Some(first), Some(count)] if node == expected && first == next => {
                    nodes.push(first..first + count)
                }
                _ => return Err(format!("a bad {}line {line:?}", TOKEN_NODE)),
            }
        }
        if nodes.last().is_some_and(|last| last.end != ranks.len()) {
            return Err(format!(
                "{} ranks, but the node images hold {}",
                ranks.len(),
                nodes.last().map_or(0, |l| l.end)
            ));
        }
        Ok(GlobalMetadata {
            seq: number(TOKEN_SEQ)? as u64,
            timestamp: one(TOKEN_TIMESTAMP)?,
            component: one(TOKEN_COMPONENT)?,
            launcher_pid: number(TOKEN_LAUNCHER)? as i32,
            ranks,
            nodes,
        })
    }
}

/// Whether `dir` is a global snapshot.
pub fn is_global_snapshot(dir: &Path) -> bool {
    dir.join(GLOBAL_METADATA_FILE).is_file()
}

/// Now, as `ctime` writes it (without its newline), in UTC.
pub fn timestamp_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: gmtime_r and asctime_r write into the buffers given, which are large enough.
    unsafe {
        libc::gmtime_r(&now, &mut tm);
        libc::asctime_r(&tm, buf.as_mut_ptr());
        std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GlobalMetadata {
        GlobalMetadata {
            seq: 3,
            timestamp: "Mon Dec  7 21:40:00 2026".into(),
            component: "self".into(),
            launcher_pid: 12563,
            ranks: vec![12564, 12565],
            nodes: Vec::new(),
        }
    }

    #[test]
    fn the_metadata_has_the_original_tokens_and_reads_back() {
        let text = sample().render();
        assert_eq!(
            text,
            "# Seq: 3\n# Timestamp: Mon Dec  7 21:40:00 2026\n# Process: 0 12564\n\
             # Process: 1 12565\n# OPAL CRS Component: self\n# OPALCRS Launcher: 12563\n\
             # OPALCRS Ranks: 2\n"
        );
        assert_eq!(GlobalMetadata::parse(&text), Ok(sample()));
    }

    #[test]
    fn metadata_that_lacks_a_rank_is_refused_by_name() {
        let text = sample().render().replace("# Process: 1 12565\n", "");
        assert_eq!(GlobalMetadata::parse(&text), Err("2 ranks, but 1 processes listed".into()));
        let text = sample().render().replace("# Process: 0", "# Process: 5");
        assert!(GlobalMetadata::parse(&text).unwrap_err().contains("a bad # Process: line"));
        let text = sample().render().replace("# Seq: 3\n", "");
        assert_eq!(GlobalMetadata::parse(&text), Err("no # Seq:".into()));
    }

    #[test]
    fn a_criu_job_across_nodes_records_the_ranks_of_each_node_image() {
        let across = GlobalMetadata {
            component: "criu".into(),
            ranks: vec![11, 12, 21, 22, 23],
            nodes: vec![0..2, 2..5],
            ..sample()
        };
        let text = across.render();
        assert!(text.ends_with("# OPALCRS Node: 0 0 2\n# OPALCRS Node: 1 2 3\n"), "{text}");
        assert_eq!(GlobalMetadata::parse(&text), Ok(across.clone()));
        let short = text.replace("# OPALCRS Node: 1 2 3", "# OPALCRS Node: 1 2 2");
        assert_eq!(
            GlobalMetadata::parse(&short),
            Err("5 ranks, but the node images hold 4".into())
        );
        let gap = text.replace("# OPALCRS Node: 1 2 3", "# OPALCRS Node: 1 3 2");
        assert!(GlobalMetadata::parse(&gap).unwrap_err().contains("a bad # OPALCRS Node: line"));
        assert_eq!(node_snapshot(Path::new("/g/0"), 1), PathBuf::from("/g/0/opal_node_1.ckpt/0"));
    }

    #[test]
    fn names_follow_the_original() {
        assert_eq!(default_series_name(12563), "ompi_global_snapshot_12563.ckpt");
        assert_eq!(
            rank_snapshot(Path::new("/g/0"), 2),
            PathBuf::from("/g/0/opal_snapshot_2.ckpt/0")
        );
    }
}

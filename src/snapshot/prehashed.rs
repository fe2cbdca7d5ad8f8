//! Checksums computed while a file was being written, by a process that followed it
//! (the criu component's image follower), handed to [`publish`] in a file of the
//! snapshot directory so that the manifest need not read those bytes again.
//!
//! Publishing trusts a record only when the file, as it holds it open, still has the
//! recorded inode, size, modification and change times: the record's last look at
//! the file. A file written after that look has another change time (kernels since
//! 6.13 give a change right after a `stat` a fine-grained time; older ones a
//! jiffy-grained one) and is hashed again; the records file itself is removed and
//! never listed.
//!
//! [`publish`]: super::PendingSnapshot::publish

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use xxhash_rust::xxh3::Xxh3;

/// The records file inside a snapshot directory being written.
pub(crate) const PREHASHED_FILE: &str = ".opalcrs-prehashed";

/// The last line of a complete records file: one cut short is not used.
const END_LINE: &str = "end";

/// Bytes read at a time while catching up with a growing file.
const READ_SIZE: usize = 1 << 20;

/// What a follower saw of one file at its last look, and the XXH3-128 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prehashed {
    /// Name inside the snapshot directory (no `/`, no blanks).
    pub name: String,
    pub size: u64,
    pub ino: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// 32 lowercase hex digits.
    pub hash: String,
}

impl Prehashed {
    /// Whether `file` is still what the record describes.
    pub(crate) fn matches(&self, meta: &std::fs::Metadata) -> bool {
        meta.is_file()
            && meta.ino() == self.ino
            && meta.len() == self.size
            && (meta.mtime(), meta.mtime_nsec()) == self.mtime
            && (meta.ctime(), meta.ctime_nsec()) == self.ctime
    }
}

/// The records as a file's text: one line per file, then [`END_LINE`].
pub(crate) fn render(records: &[Prehashed]) -> String {
    let mut text = String::new();
    for r in records {
        text += &format!(
            "{} {} {} {}.{} {}.{} {}\n",
            r.hash, r.size, r.ino, r.mtime.0, r.mtime.1, r.ctime.0, r.ctime.1, r.name
        );
    }
    text + END_LINE + "\n"
}

/// The records of a complete records file; None when it is cut short or garbled.
pub(crate) fn parse(text: &str) -> Option<Vec<Prehashed>> {
    let body = text.strip_suffix(&format!("{END_LINE}\n"))?;
    let time = |word: &str| -> Option<(i64, i64)> {
        let (sec, nsec) = word.split_once('.')?;
        Some((sec.parse().ok()?, nsec.parse().ok()?))
    };
    body.lines()
        .map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            let &[hash, size, ino, mtime, ctime, name] = words.as_slice() else { return None };
            let is_hash = hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_hash || name.is_empty() || name.contains('/') {
                return None;
            }
            Some(Prehashed {
                name: name.to_string(),
                size: size.parse().ok()?,
                ino: ino.parse().ok()?,
                mtime: time(mtime)?,
                ctime: time(ctime)?,
                hash: hash.to_ascii_lowercase(),
            })
        })
        .collect()
}

/// XXH3-128 of a file that only grows at its end while it is followed: each
/// [`catch_up`](GrowingFileHash::catch_up) hashes what was appended since the last.
pub(crate) struct GrowingFileHash {
    hasher: Xxh3,
    hashed: u64,
    buffer: Vec<u8>,
}

impl GrowingFileHash {
    pub(crate) fn new() -> GrowingFileHash {
        GrowingFileHash { hasher: Xxh3::new(), hashed: 0, buffer: vec![0; READ_SIZE] }
    }

    /// How many bytes are hashed so far.
    pub(crate) fn hashed(&self) -> u64 {
        self.hashed
    }

    /// Hashes the bytes from where the last call stopped to the end of the file now.
    pub(crate) fn catch_up(&mut self, file: &File) -> io::Result<()> {
        loop {
            match file.read_at(&mut self.buffer, self.hashed) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.hasher.update(&self.buffer[..n]);
                    self.hashed += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The record of `file` (named `name`) once its writer is done: hashed to its end,
    /// with a look at it taken after the last byte was read. None when the file is
    /// shorter than what was hashed (it was cut: the hash is of other bytes).
    pub(crate) fn finish(mut self, name: &str, file: &File) -> io::Result<Option<Prehashed>> {
        self.catch_up(file)?;
        let meta = file.metadata()?;
        if meta.len() != self.hashed {
            return Ok(None);
        }
        Ok(Some(Prehashed {
            name: name.to_string(),
            size: meta.len(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            hash: format!("{:032x}", self.hasher.digest128()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(tag: &str) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("opalcrs-prehashed-{tag}-{}", std::process::id()));
        let file =
            File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        (path, file)
    }

    /// A small xorshift generator: the test needs no crate for its random chunk sizes.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn a_file_grown_in_random_chunks_hashes_as_the_whole_file_does() {
        for seed in [1u64, 7, 0x9e37_79b9, 123_456_789] {
            let (path, file) = temp_file(&format!("grow{seed}"));
            let mut writer = File::options().append(true).open(&path).unwrap();
            let mut state = seed;
            let mut written = Vec::new();
            let mut follower = GrowingFileHash::new();
            // Chunks from 0 bytes to past the read size, with catch-ups in between
            // and sometimes several chunks before one.
            for _ in 0..40 {
                let len = (next(&mut state) % (3 * READ_SIZE as u64 / 2)) as usize;
                let chunk: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
                writer.write_all(&chunk).unwrap();
                written.extend_from_slice(&chunk);
                if next(&mut state) % 3 != 0 {
                    follower.catch_up(&file).unwrap();
                }
            }
            let record = follower.finish("pages-1.img", &file).unwrap().unwrap();
            assert_eq!(record.hash, format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&written)));
            assert_eq!(record.size, written.len() as u64);
            assert!(record.matches(&file.metadata().unwrap()));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn an_empty_file_hashes_as_empty_bytes() {
        let (path, file) = temp_file("empty");
        let record = GrowingFileHash::new().finish("pages-2.img", &file).unwrap().unwrap();
        assert_eq!(record.hash, format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"")));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_cut_below_what_was_hashed_gives_no_record() {
        let (path, mut file) = temp_file("cut");
        file.write_all(&[5u8; 10_000]).unwrap();
        let mut follower = GrowingFileHash::new();
        follower.catch_up(&file).unwrap();
        file.set_len(100).unwrap();
        assert_eq!(follower.finish("pages-3.img", &file).unwrap(), None);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_written_after_the_last_look_no_longer_matches() {
        let (path, mut file) = temp_file("rewritten");
        file.write_all(&[1u8; 4096]).unwrap();
        let record = GrowingFileHash::new().finish("pages-4.img", &file).unwrap().unwrap();
        // Same size, one byte changed in place: only the times tell.
        file.write_all_at(&[2u8], 10).unwrap();
        assert!(!record.matches(&file.metadata().unwrap()), "{record:?}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn records_round_trip_and_a_file_cut_short_is_refused() {
        let records = vec![
            Prehashed {
                name: "pages-1.img".into(),
                size: 1 << 30,
                ino: 42,
                mtime: (1_700_000_000, 123),
                ctime: (1_700_000_001, 999_999_999),
                hash: "0123456789abcdef0123456789abcdef".into(),
            },
            Prehashed {
                name: "pages-2.img".into(),
                size: 0,
                ino: 7,
                mtime: (0, 0),
                ctime: (0, 0),
                hash: "ffffffffffffffffffffffffffffffff".into(),
            },
        ];
        let text = render(&records);
        assert_eq!(parse(&text), Some(records));
        assert_eq!(parse(&render(&[])), Some(Vec::new()));
        for cut in 0..text.len() - 1 {
            assert_eq!(parse(&text[..cut]), None, "cut at {cut}: {:?}", &text[..cut]);
        }
        for bad in [
            "xyz 1 2 3.4 5.6 pages-1.img\nend\n",
            "0123456789abcdef0123456789abcdef 1 2 3.4 5.6 ../x\nend\n",
            "0123456789abcdef0123456789abcdef 1 2 3 5.6 a\nend\n",
            "0123456789abcdef0123456789abcdef 1 2 3.4 5.6 a b\nend\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}

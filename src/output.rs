//! Verbose and warning output in the original's shape, `[host:pid] message`, on
//! stderr, through the `log` facade. The `*_verbose` parameters set the level.

use log::{Level, LevelFilter, Metadata, Record};
use std::io::Write;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        // One write per line so lines from several threads do not interleave.
        let line = format!("[{}:{}] {prefix}{}\n", hostname(), std::process::id(), record.args());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at the default level (errors and warnings) if none is yet, so
/// errors reported before `opal_init` are seen too.
pub fn ensure_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}

/// Maps an OPAL verbosity (0 = errors and warnings only, 10 = the seed's progress
/// lines, 20+ = everything) to a log level and installs the logger once.
pub fn set_verbosity(verbose: i64) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match verbose {
        i64::MIN..=0 => LevelFilter::Warn,
        1..=9 => LevelFilter::Info,
        10..=19 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    });
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

//! The one table that describes every parameter libopalcrs reads, and the rules that say
//! which values each accepts. The README's parameter table, the man pages and `opal-info`
//! are generated from it or tested against it.

use std::fmt::Write as _;
use Kind::{Bool, Int, Str};

/// The type of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A decimal integer that fits in an `i64`; some parameters narrow the range.
    Int,
    /// An integer (nonzero = true) or one of the original boolean words.
    Bool,
    /// Free text; `crs` and `crs_base_snapshot_name` have their own rules.
    Str,
    /// One of a fixed set of words (compared without regard to ASCII case).
    Choice(&'static [&'static str]),
}

/// One parameter: its full MCA name (`framework_component_variable`), type, default and help.
#[derive(Debug, PartialEq, Eq)]
pub struct ParamDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub help: &'static str,
}

/// The component names the `crs` list may contain.
pub const CRS_COMPONENTS: &[&str] = &["self", "criu", "none", "blcr", "dmtcp"];

/// Parameters that describe one run only (a tool, the restart hand-over, this run's
/// selection): never recorded in a snapshot nor handed to a restarted program.
pub const PER_RUN: &[&str] =
    &["opal_cr_is_tool", "crs_base_do_not_select", "crs_self_do_restart", "crs"];

/// Deprecated names still accepted, with the current name each stands for.
pub const SYNONYMS: &[(&str, &str)] = &[("mca_param_files", "mca_base_param_files")];

const PIDNS_CHOICES: &[&str] = &["auto", "always", "never"];
const NETWORK_LOCK_CHOICES: &[&str] = &["auto", "nftables", "iptables", "skip"];

const fn def(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
) -> ParamDef {
    ParamDef { name, kind, default, help }
}

pub static PARAMS: &[ParamDef] = &[
    def(
        "ft_cr_enabled",
        Bool,
        "1",
        "Master switch for checkpoint/restart; \
         0 turns it off in this process.",
    ),
    def(
        "crs",
        Str,
        "",
        "Comma-separated list of the components to consider (self, criu, none, blcr, dmtcp), \
         a leading ^ excludes the listed ones instead, and empty selects by priority.",
    ),
    def("crs_base_verbose", Int, "0", "Verbosity of the CRS framework's messages; 0 is quiet."),
    def(
        "crs_base_snapshot_dir",
        Str,
        "",
        "Directory that holds the snapshot series; empty means $HOME, \
         or the current directory when $HOME is unset or not writable.",
    ),
    def(
        "crs_base_snapshot_name",
        Str,
        "",
        "Name of the snapshot series directory, without / or ..; \
         empty means opal_snapshot_<pid>.ckpt.",
    ),
    def(
        "crs_base_snapshot_keep",
        Int,
        "0",
        "Number of newest snapshots kept in a series; \
         0 keeps them all.",
    ),
    def(
        "crs_base_snapshot_fsync",
        Bool,
        "1",
        "Flush a snapshot's files and directories to disk before publishing it.",
    ),
    def(
        "crs_base_do_not_select",
        Bool,
        "0",
        "Do not select a CRS component when the process initialises.",
    ),
    def("crs_self_priority", Int, "20", "Selection priority of the self component."),
    def(
        "crs_self_verbose",
        Int,
        "0",
        "Verbosity of the self component's messages; 0 follows crs_base_verbose.",
    ),
    def(
        "crs_self_prefix",
        Str,
        "opal_crs_self_user",
        "Prefix of the callbacks the program exports: \
         <prefix>_checkpoint, <prefix>_continue and <prefix>_restart.",
    ),
    def(
        "crs_self_do_restart",
        Bool,
        "0",
        "Call the program's restart callback during initialisation (set by opal-restart).",
    ),
    def("crs_none_priority", Int, "1", "Selection priority of the none component."),
    def(
        "crs_none_select_warning",
        Bool,
        "0",
        "Warn when the none component is selected while checkpoint/restart is enabled.",
    ),
    def("crs_criu_priority", Int, "10", "Selection priority of the criu component."),
    def(
        "crs_criu_verbose",
        Int,
        "0",
        "Verbosity of the criu component's messages; 0 follows crs_base_verbose.",
    ),
    def(
        "crs_criu_log",
        Str,
        "criu.log",
        "Name of the log file CRIU writes for each dump or restore.",
    ),
    def(
        "crs_criu_log_level",
        Int,
        "2",
        "CRIU log level from 0 (nothing) to 4 (debug); 2 records errors and warnings.",
    ),
    def(
        "crs_criu_tcp_established",
        Bool,
        "1",
        "Let CRIU checkpoint and restore established TCP connections; \
         0 refuses to checkpoint a process that has one, naming it.",
    ),
    def(
        "crs_criu_network_lock",
        Kind::Choice(NETWORK_LOCK_CHOICES),
        "auto",
        "How CRIU keeps TCP peers quiet while it dumps a connection: auto (nftables when \
         this CRIU and kernel support it, else iptables), nftables, iptables, or skip.",
    ),
    def(
        "crs_criu_file_locks",
        Bool,
        "1",
        "Let CRIU checkpoint and restore the file locks the process holds \
         (flock, POSIX and OFD locks); 0 makes CRIU refuse a process that holds one.",
    ),
    def(
        "crs_criu_shell_job",
        Bool,
        "1",
        "Let CRIU handle a process started from a shell, sharing its session and terminal.",
    ),
    def(
        "crs_criu_new_session",
        Bool,
        "1",
        "Start a session of its own (setsid) at opal_init when the process's session leader \
         is outside its PID namespace, which CRIU cannot dump.",
    ),
    def(
        "crs_criu_ext_unix_sk",
        Bool,
        "1",
        "Let CRIU handle connections to Unix sockets outside the process.",
    ),
    def(
        "crs_criu_leave_running",
        Bool,
        "1",
        "Keep the process running after a CRIU dump; \
         0 makes it exit once the snapshot is published.",
    ),
    def("crs_criu_binary", Str, "", "Path of the criu executable; empty searches PATH."),
    def(
        "crs_criu_pidns",
        Kind::Choice(PIDNS_CHOICES),
        "auto",
        "Whether a CRIU restore runs in a fresh PID namespace: \
         auto (when needed), always or never.",
    ),
    def(
        "crs_criu_truncate_grown",
        Bool,
        "1",
        "Before a CRIU restore, cut a file the process had open (not append-only) that grew \
         since the checkpoint back to its size then; 0 refuses the restore instead.",
    ),
    def(
        "crs_criu_follow_images",
        Bool,
        "0",
        "With 1, hash the page images of a process of 32 MiB or more while CRIU writes them, in a \
         helper process outside the dumped tree (opal-checkpoint found next to the library): \
         the checkpoint ends sooner, but CRIU's freeze can grow where cores or memory \
         bandwidth are scarce; 0 hashes them after the dump.",
    ),
    def(
        "crs_criu_restore_timeout",
        Int,
        "30",
        "Seconds a CRIU restore may take before it is killed and reported (the restart then \
         falls back to an older snapshot); 0 waits without limit.",
    ),
    def("opal_cr_verbose", Int, "0", "Verbosity of the C/R runtime's messages; 0 is quiet."),
    def(
        "opal_cr_use_thread",
        Bool,
        "1",
        "Serve checkpoint requests from a listener thread; 0 serves them only when the program \
         calls opal_cr_test_if_checkpoint_ready() or enters the library.",
    ),
    def(
        "opal_cr_thread_sleep_check",
        Int,
        "0",
        "Accepted for compatibility; no effect (the listener thread waits for events instead of polling).",
    ),
    def(
        "opal_cr_thread_sleep_wait",
        Int,
        "100",
        "Accepted for compatibility; no effect (a checkpoint waits on critical sections without polling).",
    ),
    def(
        "opal_cr_is_tool",
        Bool,
        "0",
        "Marks the process as a checkpoint/restart tool rather than an application.",
    ),
    def(
        "opal_cr_signal",
        Int,
        "10",
        "Number of the signal that requests a checkpoint (10 is SIGUSR1 on Linux); 0 disables it.",
    ),
    def(
        "opal_cr_signal_exit",
        Bool,
        "0",
        "Exit after a checkpoint triggered by the signal has been published.",
    ),
    def(
        "opal_cr_tmp_dir",
        Str,
        "",
        "Directory of the opal_cr_restart-env-<pid> file read by opal_cr_refresh_environ; empty means $XDG_RUNTIME_DIR, else $TMPDIR, else /tmp (the control socket needs no directory).",
    ),
    def(
        "opal_cr_checkpoint_interval",
        Int,
        "0",
        "Seconds between periodic checkpoints; 0 turns them off.",
    ),
    def(
        "opal_cr_preload_children",
        Bool,
        "1",
        "Keep this library in LD_PRELOAD, so the program a wrapper (setsid, nohup, env, timeout, a script) executes, and the program's own exec'd children, are preloaded too, and a forked child that has not exec'd gets the orphan watcher that follows a daemon; 0 removes it in the first process that loads it, and forked children get no watcher.",
    ),
    def(
        "opal_cr_enable_timer",
        Bool,
        "0",
        "Accepted for compatibility; no effect (opal-checkpoint -v prints the phase timings).",
    ),
    def(
        "opal_cr_enable_timer_barrier",
        Bool,
        "0",
        "Accepted for compatibility; no effect.",
    ),
    def("opal_cr_timer_target_rank", Int, "0", "Accepted for compatibility; no effect (single-process library)."),
    def(
        "opal_cr_debug_sigpipe",
        Bool,
        "0",
        "Accepted for compatibility; no effect.",
    ),
    def(
        "mca_base_param_files",
        Str,
        "",
        "Parameter files separated by ':' where the leftmost wins, or none; \
         empty means $HOME/.openmpi/mca-params.conf:<sysconfdir>/openmpi-mca-params.conf.",
    ),
    def(
        "mca_base_override_param_file",
        Str,
        "",
        "File whose values win over every other source; \
         empty means <sysconfdir>/openmpi-mca-params-override.conf.",
    ),
    def(
        "mca_base_param_file_prefix",
        Str,
        "",
        "Comma-separated aggregate (AMCA) parameter files, \
         read before and winning over the other parameter files.",
    ),
    def(
        "mca_base_param_file_path",
        Str,
        "",
        "Directories separated by ':' that are searched for relative AMCA file names; \
         empty means <pkgdatadir>/amca-param-sets and the current directory.",
    ),
    def(
        "mca_base_suppress_override_warning",
        Bool,
        "0",
        "Do not warn when the override file replaces a value that was set elsewhere.",
    ),
];

/// The table entry of a parameter, by its current name (see [`canonical_name`] for synonyms).
pub fn lookup(name: &str) -> Option<&'static ParamDef> {
    PARAMS.iter().find(|def| def.name == name)
}

/// The current name for a deprecated synonym; any other name is returned unchanged.
pub fn canonical_name(name: &str) -> &str {
    SYNONYMS.iter().find(|(old, _)| *old == name).map_or(name, |(_, new)| new)
}

/// What a `crs` value asks for. No components and `exclude == false` means auto-select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrsSelection {
    /// The list was written with a leading `^`: every component but these.
    pub exclude: bool,
    /// The named components in the order given, without repeats.
    pub components: Vec<&'static str>,
}

/// Reads a `crs` value: words separated by commas (blanks around them and empty words are
/// ignored), each a name from [`CRS_COMPONENTS`], optionally preceded by one `^`.
/// `None` for an unknown name, a `^` elsewhere than in front, or a `^` with no names.
pub fn parse_crs_list(value: &str) -> Option<CrsSelection> {
    let value = value.trim();
    let (exclude, list) = match value.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let mut components = Vec::new();
    for word in list.split(',').map(str::trim).filter(|word| !word.is_empty()) {
        let name = CRS_COMPONENTS.iter().find(|name| **name == word)?;
        if !components.contains(name) {
            components.push(*name);
        }
    }
    if exclude && components.is_empty() {
        return None;
    }
    Some(CrsSelection { exclude, components })
}

/// Reads an integer: decimal with an optional sign, surrounding blanks ignored.
pub fn parse_int(value: &str) -> Option<i64> {
    value.trim().parse().ok()
}

/// Reads a boolean: an integer (nonzero = true) or one of the words in [`BOOL_WORDS`],
/// in any ASCII case, surrounding blanks ignored.
pub fn parse_bool(value: &str) -> Option<bool> {
    if let Some(number) = parse_int(value) {
        return Some(number != 0);
    }
    let value = value.trim();
    BOOL_WORDS
        .iter()
        .find(|(word, _)| word.eq_ignore_ascii_case(value))
        .map(|(_, meaning)| *meaning)
}

/// The boolean words accepted besides integers.
pub const BOOL_WORDS: &[(&str, bool)] = &[
    ("true", true),
    ("t", true),
    ("yes", true),
    ("y", true),
    ("enabled", true),
    ("on", true),
    ("false", false),
    ("f", false),
    ("no", false),
    ("n", false),
    ("disabled", false),
    ("off", false),
];

/// The entry of `choices` that `value` names (ASCII case and surrounding blanks ignored).
pub fn parse_choice(choices: &'static [&'static str], value: &str) -> Option<&'static str> {
    let value = value.trim();
    choices.iter().copied().find(|choice| choice.eq_ignore_ascii_case(value))
}

/// The series name must stay one directory below the snapshot directory.
fn is_series_name(value: &str) -> bool {
    !value.contains('/') && !value.contains("..") && value != "."
}

/// The integer range a parameter accepts; most take any `i64`.
fn int_range(name: &str) -> (i64, i64) {
    match name {
        "opal_cr_signal" => (0, 64),
        "crs_base_snapshot_keep"
        | "crs_criu_restore_timeout"
        | "opal_cr_checkpoint_interval"
        | "opal_cr_thread_sleep_check"
        | "opal_cr_thread_sleep_wait" => (0, i64::MAX),
        _ => (i64::MIN, i64::MAX),
    }
}

impl ParamDef {
    /// Whether `value` is valid for this parameter.
    pub fn accepts(&self, value: &str) -> bool {
        // A NUL could never reach C code intact.
        if value.contains('\0') {
            return false;
        }
        match self.kind {
            Kind::Int => {
                let (min, max) = int_range(self.name);
                parse_int(value).is_some_and(|number| (min..=max).contains(&number))
            }
            Kind::Bool => parse_bool(value).is_some(),
            Kind::Choice(choices) => parse_choice(choices, value).is_some(),
            Kind::Str => match self.name {
                "crs" => parse_crs_list(value).is_some(),
                "crs_base_snapshot_name" => is_series_name(value),
                _ => true,
            },
        }
    }

    /// What this parameter accepts, worded to follow "expected" in an error message.
    pub fn accepted(&self) -> String {
        match self.kind {
            Kind::Int => match int_range(self.name) {
                (i64::MIN, i64::MAX) => "an integer".to_string(),
                (min, i64::MAX) => format!("an integer >= {min}"),
                (min, max) => format!("an integer {min}..{max}"),
            },
            Kind::Bool => {
                let words: Vec<&str> = BOOL_WORDS.iter().map(|(word, _)| *word).collect();
                format!("a boolean: an integer (nonzero = true) or one of {}", words.join(", "))
            }
            Kind::Choice(choices) => format!("one of {}", choices.join(", ")),
            Kind::Str => match self.name {
                "crs" => format!(
                    "a comma-separated list of {}, optionally led by ^ to exclude them, or empty",
                    CRS_COMPONENTS.join(", ")
                ),
                "crs_base_snapshot_name" => {
                    "a directory name without '/' or '..', or empty for the default".to_string()
                }
                _ => "text without NUL characters".to_string(),
            },
        }
    }
}

/// The parameter table in Markdown: `| name | default | meaning |`, one row per parameter,
/// an empty default shown as `(empty)`. A `<` in a help text is escaped so that
/// placeholders such as `<pid>` are not taken for HTML tags.
pub fn markdown_table() -> String {
    let mut table = String::from("| name | default | meaning |\n| --- | --- | --- |\n");
    for def in PARAMS {
        let default = if def.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", def.default)
        };
        // Writing to a String cannot fail.
        let help = def.help.replace('<', "\\<");
        let _ = writeln!(table, "| `{}` | {} | {} |", def.name, default, help);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        for (i, def) in PARAMS.iter().enumerate() {
            assert!(
                def.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                def.name
            );
            assert!(
                PARAMS[i + 1..].iter().all(|other| other.name != def.name),
                "{} twice",
                def.name
            );
        }
    }

    #[test]
    fn every_default_is_valid() {
        for def in PARAMS {
            assert!(def.accepts(def.default), "default of {} is invalid", def.name);
        }
    }

    #[test]
    fn help_texts_are_one_sentence_that_fits_a_table_cell() {
        for def in PARAMS {
            let help = def.help;
            assert!(help.ends_with('.'), "{}", def.name);
            assert!(help.starts_with(|c: char| c.is_ascii_uppercase()), "{}", def.name);
            // Characters that Markdown would take for table or emphasis syntax.
            assert!(!help.contains(['|', '\n', '*', '`']), "{}", def.name);
            assert!(!help.contains("  "), "{}: double blank", def.name);
            assert!(
                !help.trim_end_matches('.').contains(". "),
                "{}: more than one sentence",
                def.name
            );
        }
    }

    #[test]
    fn lookup_finds_each_entry_and_nothing_else() {
        for def in PARAMS {
            assert_eq!(lookup(def.name), Some(def));
        }
        assert_eq!(lookup("crs_blcr_priority"), None);
        assert_eq!(lookup(""), None);
    }

    #[test]
    fn synonyms_name_existing_parameters() {
        for (old, new) in SYNONYMS {
            assert!(lookup(old).is_none());
            assert!(lookup(new).is_some());
            assert_eq!(canonical_name(old), *new);
        }
        assert_eq!(canonical_name("crs"), "crs");
    }

    #[test]
    fn the_listed_parameters_have_the_agreed_kinds_and_defaults() {
        let expect = |name, kind, default| {
            let def = lookup(name).unwrap();
            assert_eq!((def.kind, def.default), (kind, default), "{name}");
        };
        expect("ft_cr_enabled", Bool, "1");
        expect("crs", Str, "");
        expect("crs_self_priority", Int, "20");
        expect("crs_self_prefix", Str, "opal_crs_self_user");
        expect("crs_criu_log_level", Int, "2");
        expect("crs_criu_pidns", Kind::Choice(&["auto", "always", "never"]), "auto");
        expect("crs_criu_new_session", Bool, "1");
        expect("crs_criu_restore_timeout", Int, "30");
        expect("crs_criu_truncate_grown", Bool, "1");
        expect("crs_criu_follow_images", Bool, "0");
        assert!(!lookup("crs_criu_restore_timeout").unwrap().accepts("-1"));
        expect("crs_criu_file_locks", Bool, "1");
        expect(
            "crs_criu_network_lock",
            Kind::Choice(&["auto", "nftables", "iptables", "skip"]),
            "auto",
        );
        expect("opal_cr_use_thread", Bool, "1");
        expect("opal_cr_thread_sleep_wait", Int, "100");
        expect("opal_cr_signal", Int, "10");
        expect("mca_base_suppress_override_warning", Bool, "0");
        assert_eq!(PARAMS.len(), 49);
    }

    #[test]
    fn integers() {
        assert_eq!(parse_int(" +42 "), Some(42));
        assert_eq!(parse_int("-7"), Some(-7));
        assert_eq!(parse_int("9223372036854775807"), Some(i64::MAX));
        for bad in ["", " ", "abc", "1.5", "0x10", "9223372036854775808", "1 2", "++1"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
        let signal = lookup("opal_cr_signal").unwrap();
        assert!(signal.accepts("0") && signal.accepts("64") && signal.accepts(" 12 "));
        assert!(!signal.accepts("65") && !signal.accepts("-1"));
        assert_eq!(signal.accepted(), "an integer 0..64");
        let keep = lookup("crs_base_snapshot_keep").unwrap();
        assert!(keep.accepts("0") && !keep.accepts("-1"));
        assert_eq!(keep.accepted(), "an integer >= 0");
        let priority = lookup("crs_self_priority").unwrap();
        assert!(priority.accepts("-5"));
        assert_eq!(priority.accepted(), "an integer");
    }

    #[test]
    fn booleans() {
        for yes in ["1", "-3", " 2 ", "true", "T", "Yes", "y", "ENABLED", "on"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes:?}");
        }
        for no in ["0", "+0", "false", "F", "no", "N", "Disabled", "OFF", " off "] {
            assert_eq!(parse_bool(no), Some(false), "{no:?}");
        }
        for bad in ["", "2x", "yess", "tru", "oui"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn choices_ignore_case_and_blanks() {
        assert_eq!(parse_choice(PIDNS_CHOICES, " Always "), Some("always"));
        assert_eq!(parse_choice(PIDNS_CHOICES, "sometimes"), None);
        assert_eq!(lookup("crs_criu_pidns").unwrap().accepted(), "one of auto, always, never");
    }

    #[test]
    fn crs_lists() {
        let selection = |exclude, components: &[&'static str]| {
            Some(CrsSelection { exclude, components: components.to_vec() })
        };
        assert_eq!(parse_crs_list(""), selection(false, &[]));
        assert_eq!(parse_crs_list("self"), selection(false, &["self"]));
        assert_eq!(parse_crs_list(" self , criu,"), selection(false, &["self", "criu"]));
        assert_eq!(parse_crs_list("^none,none"), selection(true, &["none"]));
        assert_eq!(parse_crs_list("blcr,dmtcp"), selection(false, &["blcr", "dmtcp"]));
        for bad in ["foo", "self,foo", "Self", "^", "self,^criu", "^^self"] {
            assert_eq!(parse_crs_list(bad), None, "{bad:?}");
        }
        let accepted = lookup("crs").unwrap().accepted();
        assert!(CRS_COMPONENTS.iter().all(|name| accepted.contains(name)));
    }

    #[test]
    fn series_names() {
        let name = lookup("crs_base_snapshot_name").unwrap();
        for good in ["", "job42", "my.ckpt", "a b"] {
            assert!(name.accepts(good), "{good:?}");
        }
        for bad in ["a/b", "/abs", ".", "..", "x..y", "../up"] {
            assert!(!name.accepts(bad), "{bad:?}");
        }
    }

    #[test]
    fn nul_is_refused_everywhere() {
        assert!(!lookup("crs_criu_binary").unwrap().accepts("/usr/sbin/criu\0"));
    }

    #[test]
    fn markdown_table_has_a_row_per_parameter() {
        let table = markdown_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| name | default | meaning |");
        assert_eq!(lines[1], "| --- | --- | --- |");
        assert_eq!(lines.len(), PARAMS.len() + 2);
        assert!(lines.contains(
            &"| `crs_criu_binary` | (empty) | Path of the criu executable; empty searches PATH. |"
        ));
        assert!(lines.contains(
            &"| `crs_self_priority` | `20` | Selection priority of the self component. |"
        ));
        assert!(lines.iter().any(|line| line.contains("opal_snapshot_\\<pid>.ckpt")));
        assert!(lines[2..].iter().all(|line| line.starts_with("| `") && line.ends_with(" |")));
    }
}

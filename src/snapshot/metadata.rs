//! `snapshot_meta.data`, the per-snapshot metadata file of the original OPAL CRS.
//!
//! One record per line, `<token><value>\n`, where every token ends in `": "`. The
//! original tokens are kept byte for byte so that an Open MPI `opal-restart` can read our
//! snapshots and we can read theirs (1.6 `# Component: `, 1.7+ `# OPAL CRS Component: `);
//! our own tokens all start with `# OPALCRS `.

use crate::codes;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Name of the metadata file inside a snapshot directory.
pub const METADATA_FILE: &str = "snapshot_meta.data";

pub const TOKEN_PID: &str = "# PID: ";
/// Component token of 1.7 and later; the one we write.
pub const TOKEN_COMPONENT: &str = "# OPAL CRS Component: ";
/// Component token of 1.6; read, never written.
pub const TOKEN_COMPONENT_1_6: &str = "# Component: ";
pub const TOKEN_CONTEXT: &str = "# CONTEXT: ";
pub const TOKEN_MKDIR: &str = "# MKDIR: ";
pub const TOKEN_TOUCH: &str = "# TOUCH: ";
/// Written by ORTE's sstore; neither written nor stored by us (the manifest records the
/// creation time), listed so that the set of original tokens is complete.
pub const TOKEN_TIMESTAMP: &str = "# Timestamp: ";
pub const TOKEN_VERSION: &str = "# OPALCRS Version: ";
/// Absolute path of the series directory the snapshot belongs to.
pub const TOKEN_SERIES: &str = "# OPALCRS Series: ";
pub const TOKEN_SEQ: &str = "# OPALCRS Seq: ";
/// Working directory of the checkpointed process.
pub const TOKEN_CWD: &str = "# OPALCRS Cwd: ";
pub const TOKEN_SELF_PREFIX: &str = "# OPALCRS Self Prefix: ";
/// One recorded parameter per line, value `name=value`.
pub const TOKEN_PARAM: &str = "# OPALCRS Param: ";
pub const TOKEN_HOST: &str = "# OPALCRS Host: ";
/// The libopalcrs file the process had preloaded (LD_PRELOAD), to preload on restart.
pub const TOKEN_PRELOAD: &str = "# OPALCRS Preload: ";

/// The contents of one `snapshot_meta.data`.
///
/// Scalar fields hold the first value found in the file (the original callers use
/// element 0); list fields hold every value in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub pid: Option<i32>,
    pub component: Option<String>,
    pub context: Vec<String>,
    pub mkdir: Vec<String>,
    pub touch: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub self_prefix: Option<String>,
    pub params: Vec<(String, String)>,
    pub series: Option<PathBuf>,
    pub seq: Option<u64>,
    pub version: Option<String>,
    pub host: Option<String>,
    pub preload: Option<PathBuf>,
}

impl Metadata {
    /// The file text: `# PID: `, `# OPAL CRS Component: `, then the other records.
    ///
    /// Fails when a value cannot be read back unchanged: a newline would end the record,
    /// a NUL would end it for the original's C reader, a parameter name containing `=`
    /// would split differently, a non-UTF-8 path has no text form, and the single-word
    /// values (PID, component, seq, version, host) are read back trimmed, so they may not
    /// start or end with whitespace.
    pub fn render(&self) -> Result<String> {
        let mut out = Records::default();
        if let Some(pid) = self.pid {
            out.word(TOKEN_PID, &pid.to_string())?;
        }
        if let Some(component) = &self.component {
            out.word(TOKEN_COMPONENT, component)?;
        }
        for (token, values) in
            [(TOKEN_CONTEXT, &self.context), (TOKEN_MKDIR, &self.mkdir), (TOKEN_TOUCH, &self.touch)]
        {
            for value in values {
                out.text(token, value)?;
            }
        }
        if let Some(version) = &self.version {
            out.word(TOKEN_VERSION, version)?;
        }
        if let Some(series) = &self.series {
            out.path(TOKEN_SERIES, series)?;
        }
        if let Some(seq) = self.seq {
            out.word(TOKEN_SEQ, &seq.to_string())?;
        }
        if let Some(cwd) = &self.cwd {
            out.path(TOKEN_CWD, cwd)?;
        }
        if let Some(prefix) = &self.self_prefix {
            out.text(TOKEN_SELF_PREFIX, prefix)?;
        }
        for (name, value) in &self.params {
            if name.is_empty() || name.contains('=') {
                return Err(bad_value(
                    TOKEN_PARAM,
                    name,
                    "a parameter name must be non-empty and contain no '='",
                ));
            }
            out.text(TOKEN_PARAM, &format!("{name}={value}"))?;
        }
        if let Some(host) = &self.host {
            out.word(TOKEN_HOST, host)?;
        }
        if let Some(preload) = &self.preload {
            out.path(TOKEN_PRELOAD, preload)?;
        }
        Ok(out.0)
    }

    /// Reads metadata written by us, 1.6 (`# Component: `) or 1.7+; never fails.
    ///
    /// Lines are split into token and value by the original rules ([`read_token`]), but a
    /// token must equal one of ours exactly. Single-word values are trimmed, which also
    /// accepts master's regression of values that keep a leading space. Unknown tokens
    /// and values that do not parse (a PID that is not a number) are ignored.
    pub fn parse(text: &str) -> Metadata {
        let mut meta = Metadata::default();
        let mut component_1_6 = None;
        for (token, value) in records(text) {
            let word = value.trim();
            match token {
                TOKEN_PID => fill(&mut meta.pid, word.parse().ok()),
                TOKEN_COMPONENT => fill(&mut meta.component, Some(word.to_string())),
                TOKEN_COMPONENT_1_6 => fill(&mut component_1_6, Some(word.to_string())),
                TOKEN_CONTEXT => meta.context.push(value.to_string()),
                TOKEN_MKDIR => meta.mkdir.push(value.to_string()),
                TOKEN_TOUCH => meta.touch.push(value.to_string()),
                TOKEN_VERSION => fill(&mut meta.version, Some(word.to_string())),
                TOKEN_SERIES => fill(&mut meta.series, Some(PathBuf::from(value))),
                TOKEN_SEQ => fill(&mut meta.seq, word.parse().ok()),
                TOKEN_CWD => fill(&mut meta.cwd, Some(PathBuf::from(value))),
                TOKEN_SELF_PREFIX => fill(&mut meta.self_prefix, Some(value.to_string())),
                TOKEN_PARAM => {
                    if let Some((name, value)) = value.split_once('=') {
                        meta.params.push((name.to_string(), value.to_string()));
                    }
                }
                TOKEN_HOST => fill(&mut meta.host, Some(word.to_string())),
                TOKEN_PRELOAD => fill(&mut meta.preload, Some(PathBuf::from(value))),
                _ => {}
            }
        }
        fill(&mut meta.component, component_1_6);
        meta
    }
}

/// Every value recorded under `token`, in file order, by the original matching rules:
/// lines of two bytes or fewer are skipped; a line's token is everything up to the first
/// `:` plus the character after it (the whole line when it has no `:`); `token` matches
/// a line whose token is a prefix of it.
///
/// Unlike the original, a last line without a trailing newline is kept (the original lost
/// it), and lines are not cut into 256-byte chunks (the original glued them back anyway).
pub fn read_token(text: &str, token: &str) -> Vec<String> {
    records(text)
        .filter(|(line_token, _)| token.starts_with(line_token))
        .map(|(_, value)| value.to_string())
        .collect()
}

/// The component that wrote the snapshot and the PID it was taken from, as
/// `opal-restart` reads them: the first `# PID: ` and the first component token (1.7+
/// spelling, else 1.6), with the original's error messages when either is missing.
pub fn extract_expected_component(text: &str) -> Result<(String, i32)> {
    let pid = read_token(text, TOKEN_PID)
        .first()
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| {
            Error::new(codes::OPAL_ERROR, "Error: expected_component: PID information unavailable!")
        })?;
    let component = read_token(text, TOKEN_COMPONENT)
        .into_iter()
        .chain(read_token(text, TOKEN_COMPONENT_1_6))
        .next()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            Error::new(
                codes::OPAL_ERROR,
                "Error: expected_component: Component Name information unavailable!",
            )
        })?;
    Ok((component, pid))
}

/// `(line token, value)` of every line that is not skipped, by the rules of [`read_token`].
fn records(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split('\n').filter(|line| line.len() > 2).map(|line| {
        let token_end = match line.find(':') {
            Some(colon) => colon + 1 + line[colon + 1..].chars().next().map_or(0, char::len_utf8),
            None => line.len(),
        };
        line.split_at(token_end)
    })
}

fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// Accumulates rendered records, refusing values that would not read back unchanged.
#[derive(Default)]
struct Records(String);

impl Records {
    fn text(&mut self, token: &str, value: &str) -> Result<()> {
        if value.contains(['\n', '\0']) {
            return Err(bad_value(token, value, "values may not contain a newline or NUL"));
        }
        self.0.push_str(token);
        self.0.push_str(value);
        self.0.push('\n');
        Ok(())
    }

    fn word(&mut self, token: &str, value: &str) -> Result<()> {
        if value.trim() != value {
            return Err(bad_value(token, value, "this value may not start or end with whitespace"));
        }
        self.text(token, value)
    }

    fn path(&mut self, token: &str, path: &Path) -> Result<()> {
        let text = path.to_str().ok_or_else(|| {
            bad_value(token, &path.to_string_lossy(), "the path is not valid UTF-8")
        })?;
        self.text(token, text)
    }
}

fn bad_value(token: &str, value: &str, why: &str) -> Error {
    Error::new(
        codes::OPAL_ERR_BAD_PARAM,
        format!("cannot write metadata record {:?} with value {value:?}: {why}", token.trim_end()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Metadata {
        Metadata {
            pid: Some(4242),
            component: Some("self".into()),
            context: vec!["./app -x 3".into()],
            mkdir: vec!["/tmp/a".into(), "/tmp/b".into()],
            touch: vec!["/tmp/a/f".into()],
            cwd: Some("/home/u/work".into()),
            self_prefix: Some("my_prefix".into()),
            params: vec![("crs_base_snapshot_keep".into(), "3".into()), ("x".into(), "a=b".into())],
            series: Some("/tmp/opal_snapshot_4242.ckpt".into()),
            seq: Some(7),
            version: Some("0.1.0".into()),
            host: Some("node1".into()),
            preload: None,
        }
    }

    #[test]
    fn render_writes_original_tokens_first_then_ours() {
        let expected = "# PID: 4242\n\
                        # OPAL CRS Component: self\n\
                        # CONTEXT: ./app -x 3\n\
                        # MKDIR: /tmp/a\n\
                        # MKDIR: /tmp/b\n\
                        # TOUCH: /tmp/a/f\n\
                        # OPALCRS Version: 0.1.0\n\
                        # OPALCRS Series: /tmp/opal_snapshot_4242.ckpt\n\
                        # OPALCRS Seq: 7\n\
                        # OPALCRS Cwd: /home/u/work\n\
                        # OPALCRS Self Prefix: my_prefix\n\
                        # OPALCRS Param: crs_base_snapshot_keep=3\n\
                        # OPALCRS Param: x=a=b\n\
                        # OPALCRS Host: node1\n";
        assert_eq!(sample().render().unwrap(), expected);
        assert_eq!(Metadata::parse(expected), sample());
        assert_eq!(Metadata::default().render().unwrap(), "");
    }

    #[test]
    fn render_refuses_values_that_would_not_read_back() {
        let cases: Vec<(Metadata, &str)> = vec![
            (Metadata { context: vec!["a\nb".into()], ..Default::default() }, "# CONTEXT:"),
            (Metadata { mkdir: vec!["a\0b".into()], ..Default::default() }, "# MKDIR:"),
            (
                Metadata { component: Some(" self".into()), ..Default::default() },
                "# OPAL CRS Component:",
            ),
            (
                Metadata { params: vec![("a=b".into(), "c".into())], ..Default::default() },
                "# OPALCRS Param:",
            ),
            (
                Metadata { params: vec![(String::new(), "c".into())], ..Default::default() },
                "# OPALCRS Param:",
            ),
            (
                Metadata { params: vec![("a".into(), "c\n".into())], ..Default::default() },
                "# OPALCRS Param:",
            ),
        ];
        for (meta, token) in cases {
            let err = meta.render().unwrap_err();
            assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
            assert!(err.message().contains(token), "{err}");
        }
    }

    #[test]
    fn render_refuses_non_utf8_paths() {
        use std::os::unix::ffi::OsStrExt;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        let err = Metadata { cwd: Some(path), ..Default::default() }.render().unwrap_err();
        assert!(err.message().contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn parse_reads_1_6_metadata() {
        let text = "# \n# PID: 1234\n# Component: blcr\n# CONTEXT: ompi_blcr_context.1234\n";
        let meta = Metadata::parse(text);
        assert_eq!(meta.pid, Some(1234));
        assert_eq!(meta.component.as_deref(), Some("blcr"));
        assert_eq!(meta.context, vec!["ompi_blcr_context.1234"]);
        assert_eq!(extract_expected_component(text).unwrap(), ("blcr".to_string(), 1234));
    }

    #[test]
    fn parse_reads_1_7_metadata_in_orte_order() {
        let text =
            "# Timestamp: Mon Jun  2 10:00:00 2014\n# PID: 4242\n# OPAL CRS Component: self\n\
                    # CONTEXT: ./app -x 3\n# OPAL Compress Component: gzip\n";
        let meta = Metadata::parse(text);
        assert_eq!(meta.pid, Some(4242));
        assert_eq!(meta.component.as_deref(), Some("self"));
        assert_eq!(meta.context, vec!["./app -x 3"]);
        assert_eq!(
            Metadata { pid: None, component: None, context: vec![], ..meta },
            Metadata::default()
        );
    }

    #[test]
    fn parse_accepts_values_with_a_leading_space() {
        let text = "# PID:  4242\n# OPAL CRS Component:  criu\n# OPALCRS Seq:  3 \n";
        let meta = Metadata::parse(text);
        assert_eq!(
            (meta.pid, meta.component.as_deref(), meta.seq),
            (Some(4242), Some("criu"), Some(3))
        );
        assert_eq!(extract_expected_component(text).unwrap(), ("criu".to_string(), 4242));
    }

    #[test]
    fn parse_prefers_the_1_7_component_token_and_the_first_scalar() {
        let text = "# Component: blcr\n# PID: x\n# PID: 7\n# PID: 8\n# OPAL CRS Component: self\n";
        let meta = Metadata::parse(text);
        assert_eq!(meta.component.as_deref(), Some("self"));
        assert_eq!(meta.pid, Some(7));
    }

    #[test]
    fn read_token_follows_the_original_matching_rules() {
        let text =
            "#\n# \n# PID: 1\n# CONTEXT: a: b\n# PI\n# PID: 2\n# PID:3\nno colon here\n# CONTEXT:";
        // `# PI` has no colon, so its token is the whole line, a prefix of `# PID: `.
        assert_eq!(read_token(text, TOKEN_PID), vec!["1", "", "2"]);
        // Only the first colon separates; `# CONTEXT:` at the end has an empty value.
        assert_eq!(read_token(text, TOKEN_CONTEXT), vec!["a: b", ""]);
        assert_eq!(read_token(text, "no colon here and more"), vec![""]);
        assert!(read_token(text, TOKEN_MKDIR).is_empty());
        // A 3-byte line is a record; ≤ 2 bytes are skipped.
        assert_eq!(read_token("abc\nab\n", "abcdef"), vec![""]);
        assert!(read_token("ab\n", "ab").is_empty());
    }

    #[test]
    fn extract_expected_component_reports_the_original_errors() {
        let err = extract_expected_component("# OPAL CRS Component: self\n").unwrap_err();
        assert_eq!(err.message(), "Error: expected_component: PID information unavailable!");
        assert_eq!(err.code(), codes::OPAL_ERROR);
        let err = extract_expected_component("# PID: 12\n").unwrap_err();
        assert_eq!(
            err.message(),
            "Error: expected_component: Component Name information unavailable!"
        );
        let err = extract_expected_component("# PID: 12\n# OPAL CRS Component: \n").unwrap_err();
        assert!(err.message().contains("Component Name"));
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\n\u{0}]{0,24}"
    }

    fn word() -> impl Strategy<Value = String> {
        text().prop_map(|s| s.trim().to_string())
    }

    /// Metadata whose free-text values come from `text`, single-word values from `word`
    /// and parameter names from `name`.
    fn metadata(
        text: BoxedStrategy<String>,
        word: BoxedStrategy<String>,
        name: BoxedStrategy<String>,
    ) -> impl Strategy<Value = Metadata> {
        let lists = (
            prop::collection::vec(text.clone(), 0..3),
            prop::collection::vec(text.clone(), 0..3),
            prop::collection::vec(text.clone(), 0..3),
            prop::collection::vec((name, text.clone()), 0..3),
        );
        let scalars = (
            any::<Option<i32>>(),
            prop::option::of(word.clone()),
            prop::option::of(text.clone()),
            prop::option::of(text.clone()),
            prop::option::of(text),
            any::<Option<u64>>(),
            prop::option::of(word.clone()),
            prop::option::of(word),
        );
        (lists, scalars, prop::option::of("[a-z/]{1,20}")).prop_map(
            |(
                (context, mkdir, touch, params),
                (pid, component, cwd, self_prefix, series, seq, version, host),
                preload,
            )| Metadata {
                pid,
                component,
                context,
                mkdir,
                touch,
                cwd: cwd.map(PathBuf::from),
                self_prefix,
                params,
                series: series.map(PathBuf::from),
                seq,
                version,
                host,
                preload: preload.map(PathBuf::from),
            },
        )
    }

    proptest! {
        #[test]
        fn renderable_values_round_trip(
            meta in metadata(text().boxed(), word().boxed(), "[^\n\u{0}=]{1,12}".boxed()),
        ) {
            let rendered = meta.render().expect("values without newlines render");
            prop_assert_eq!(Metadata::parse(&rendered), meta);
        }

        #[test]
        fn anything_rendered_reads_back_unchanged(
            meta in metadata(any::<String>().boxed(), any::<String>().boxed(), any::<String>().boxed()),
        ) {
            if let Ok(rendered) = meta.render() {
                prop_assert_eq!(Metadata::parse(&rendered), meta);
            }
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(pieces in prop::collection::vec(prop_oneof![
            Just(TOKEN_PID.as_bytes().to_vec()),
            Just(TOKEN_COMPONENT.as_bytes().to_vec()),
            Just(TOKEN_PARAM.as_bytes().to_vec()),
            Just(b":".to_vec()),
            Just(b"\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ], 0..40)) {
            let text = String::from_utf8_lossy(&pieces.concat()).into_owned();
            let _ = Metadata::parse(&text);
            let _ = read_token(&text, TOKEN_PID);
            let _ = extract_expected_component(&text);
        }
    }
}

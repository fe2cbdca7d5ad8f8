//! The command-line tools `opal-checkpoint` and `opal-restart`: option parsing in the
//! original's style (single- or double-dash long names, `-mca NAME VALUE`) and their
//! main logic. The binaries in `src/bin/` only call `main` here.

pub mod checkpoint;
pub mod info;
pub mod restart;
pub mod run;

use std::ffi::{OsStr, OsString};
use std::fmt;

/// One option of a tool: its names (without dashes), whether it takes a value, and help.
pub struct OptionDef {
    pub names: &'static [&'static str],
    pub value: Option<&'static str>,
    pub help: &'static str,
}

/// The options every tool shares: MCA parameters on the command line.
pub const MCA_OPTIONS: &[OptionDef] = &[
    OptionDef {
        names: &["mca"],
        value: Some("NAME VALUE"),
        help: "Set MCA parameter NAME to VALUE",
    },
    OptionDef {
        names: &["gmca"],
        value: Some("NAME VALUE"),
        help: "Set MCA parameter NAME to VALUE (same as -mca here)",
    },
    OptionDef {
        names: &["am"],
        value: Some("FILES"),
        help: "Aggregate MCA parameter files (sets mca_base_param_file_prefix)",
    },
];

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parsed command line: named options (by their first name), MCA pairs, operands.
#[derive(Debug, Default)]
pub struct Parsed {
    pub flags: Vec<(&'static str, Option<String>)>,
    pub mca: Vec<(String, String)>,
    pub operands: Vec<String>,
}

impl Parsed {
    pub fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| *n == name)
    }

    /// The last value given for `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_deref())
    }
}

/// The tool's arguments, without its name, as the bytes they are.
pub fn args() -> Vec<OsString> {
    std::env::args_os().skip(1).collect()
}

/// `arg` as text; names, paths and values travel in text (metadata, the control
/// protocol, parameters), so other bytes are refused, naming `what` they were.
fn utf8(arg: &OsStr, what: impl FnOnce() -> String) -> Result<&str, UsageError> {
    arg.to_str().ok_or_else(|| UsageError(format!("{} {arg:?} is not valid UTF-8", what())))
}

/// Parses arguments against `options` plus the MCA options. Long names may be written
/// with one or two dashes; `--name=value` works for options with a value.
pub fn parse(args: &[OsString], options: &'static [OptionDef]) -> Result<Parsed, UsageError> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = utf8(&args[i], || "argument".into())?;
        i += 1;
        if arg == "--" {
            for operand in &args[i..] {
                parsed.operands.push(utf8(operand, || "operand".into())?.to_string());
            }
            break;
        }
        let Some(stripped) =
            arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|s| !s.is_empty())
        else {
            parsed.operands.push(arg.to_string());
            continue;
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        let mut take = |what: &str| -> Result<String, UsageError> {
            let value =
                args.get(i).ok_or_else(|| UsageError(format!("option {arg} needs {what}")))?;
            i += 1;
            Ok(utf8(value, || format!("option {arg}: {what}"))?.to_string())
        };
        match name {
            "mca" | "gmca" => {
                let key = match inline {
                    Some(k) => k,
                    None => take("a parameter name")?,
                };
                let value = take("a value")?;
                parsed.mca.push((key, value));
            }
            "am" => {
                let value = match inline {
                    Some(v) => v,
                    None => take("a file list")?,
                };
                parsed.mca.push(("mca_base_param_file_prefix".into(), value));
            }
            _ => {
                let def = options
                    .iter()
                    .find(|o| o.names.contains(&name))
                    .ok_or_else(|| UsageError(format!("unknown option {arg}")))?;
                let value = match (def.value, inline) {
                    (None, Some(_)) => {
                        return Err(UsageError(format!("option {arg} takes no value")))
                    }
                    (None, None) => None,
                    (Some(_), Some(v)) => Some(v),
                    (Some(what), None) => Some(take(what)?),
                };
                parsed.flags.push((def.names[0], value));
            }
        }
    }
    Ok(parsed)
}

/// The usage text: a synopsis, a title, then every option.
pub fn usage(synopsis: &str, title: &str, options: &[OptionDef]) -> String {
    let mut text = format!("Usage: {synopsis}\n{title}\n\nOptions:\n");
    for option in options.iter().chain(MCA_OPTIONS) {
        let names: Vec<String> = option
            .names
            .iter()
            .map(|n| if n.len() == 1 { format!("-{n}") } else { format!("--{n}") })
            .collect();
        let left = match option.value {
            Some(v) => format!("{} {v}", names.join(", ")),
            None => names.join(", "),
        };
        text.push_str(&format!("  {left:<28} {}\n", option.help));
    }
    text
}

/// The original's output prefix, `[host:pid] `.
pub fn prefix() -> String {
    format!("[{}:{}]", crate::output::hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[OptionDef] = &[
        OptionDef { names: &["v", "verbose"], value: None, help: "" },
        OptionDef { names: &["n", "name"], value: Some("NAME"), help: "" },
    ];

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn single_and_double_dash_long_names() {
        let p = parse(
            &args(&["-verbose", "--name", "a", "-mca", "x", "1", "--mca=y", "2", "-am", "f", "42"]),
            OPTS,
        )
        .unwrap();
        assert!(p.has("v"));
        assert_eq!(p.value("n"), Some("a"));
        assert_eq!(
            p.mca,
            [
                ("x".into(), "1".into()),
                ("y".into(), "2".into()),
                ("mca_base_param_file_prefix".into(), "f".into())
            ]
        );
        assert_eq!(p.operands, ["42"]);
        assert_eq!(parse(&args(&["-n=b"]), OPTS).unwrap().value("n"), Some("b"));
    }

    #[test]
    fn errors_name_the_option() {
        assert_eq!(
            parse(&args(&["--bogus"]), OPTS).unwrap_err(),
            UsageError("unknown option --bogus".into())
        );
        assert!(parse(&args(&["-n"]), OPTS).unwrap_err().0.contains("-n needs NAME"));
        assert!(parse(&args(&["-mca", "x"]), OPTS).unwrap_err().0.contains("needs a value"));
        assert!(parse(&args(&["-v=1"]), OPTS).unwrap_err().0.contains("takes no value"));
    }

    #[test]
    fn bytes_that_are_not_text_are_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"a\xffb").to_os_string();
        let refused = |list: Vec<OsString>| parse(&list, OPTS).unwrap_err().0;
        assert_eq!(
            refused(vec!["-n".into(), bad.clone()]),
            r#"option -n: NAME "a\xFFb" is not valid UTF-8"#
        );
        assert_eq!(refused(vec![bad.clone()]), r#"argument "a\xFFb" is not valid UTF-8"#);
        assert_eq!(
            refused(vec!["--".into(), bad.clone()]),
            r#"operand "a\xFFb" is not valid UTF-8"#
        );
        assert!(refused(vec!["-mca".into(), "x".into(), bad]).contains("a value"));
    }
}

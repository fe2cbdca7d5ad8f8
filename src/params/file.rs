//! Parser for the parameter-file syntax of the original (`mca-params.conf` and friends).
//!
//! * One `name = value` per line; blanks around `=` are optional. The value is the rest of
//!   the line after the first `=`, surrounding blanks trimmed, so it may itself contain `=`.
//! * A line whose first non-blank characters are `#` or `//` is a comment. Elsewhere on a
//!   line these characters are part of the value (`url = http://host`).
//! * `/* ... */` is a comment anywhere, also over several lines; it is removed and the text
//!   before and after it forms one line. An unterminated `/*` runs to the end of the text.
//! * Blank lines are ignored.
//! * A value beginning with `~/` has the `~` replaced by the home directory passed in.
//!
//! A line that is not an assignment (no `=`, no name, or a name with blanks) is skipped with
//! a [`FileWarning`] naming its line; the other lines of the file still count. Within one
//! text a name given twice yields both entries in order, so the caller's last-wins applies.
//! The parser is pure: no file access, no environment.

use std::fmt;
use std::iter::Peekable;
use std::path::Path;
use std::str::Chars;

/// One assignment read from a parameter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: String,
    /// 1-based line on which the name stands.
    pub line: usize,
}

/// A line that was skipped, or an unterminated block comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWarning {
    /// 1-based line of the problem.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for FileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Reads the assignments of a parameter file's text. `home` expands a leading `~/` in
/// values; without it such values are kept as written.
pub fn parse(text: &str, home: Option<&Path>) -> (Vec<Entry>, Vec<FileWarning>) {
    let (lines, unterminated_comment) = logical_lines(text);
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (line, content) in lines {
        let content = content.trim();
        if content.is_empty() {
            continue;
        }
        let mut warn = |message: String| warnings.push(FileWarning { line, message });
        let Some((name, value)) = content.split_once('=') else {
            warn(format!("ignored {content:?}: expected name = value"));
            continue;
        };
        let name = name.trim();
        if name.is_empty() {
            warn(format!("ignored {content:?}: no parameter name before '='"));
        } else if name.contains(char::is_whitespace) {
            warn(format!("ignored {content:?}: parameter name {name:?} contains blanks"));
        } else {
            let value = expand_home(value.trim(), home);
            entries.push(Entry { name: name.to_string(), value, line });
        }
    }
    if let Some(line) = unterminated_comment {
        warnings.push(FileWarning {
            line,
            message: "comment opened with /* is not closed; the rest of the file is ignored"
                .to_string(),
        });
    }
    (entries, warnings)
}

/// Splits `text` into lines with the comments removed, each with the number of the line its
/// first non-blank character is on. Also returns the line of an unterminated `/*`.
fn logical_lines(text: &str) -> (Vec<(usize, String)>, Option<usize>) {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut line = 1;
    let mut current_line = 1;
    // Only blanks (and block comments) so far on the current line: `#` and `//` start a comment.
    let mut at_line_start = true;
    let mut open_block_comment: Option<usize> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if open_block_comment.is_some() {
            match c {
                '*' if chars.peek() == Some(&'/') => {
                    chars.next();
                    open_block_comment = None;
                }
                '\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match c {
            '\n' => {
                lines.push((current_line, std::mem::take(&mut current)));
                line += 1;
                current_line = line;
                at_line_start = true;
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                open_block_comment = Some(line);
            }
            '#' if at_line_start => skip_rest_of_line(&mut chars),
            '/' if at_line_start && chars.peek() == Some(&'/') => skip_rest_of_line(&mut chars),
            _ => {
                if at_line_start && !c.is_whitespace() {
                    at_line_start = false;
                    current_line = line;
                }
                current.push(c);
            }
        }
    }
    lines.push((current_line, current));
    (lines, open_block_comment)
}

/// Consumes characters up to, not including, the next newline.
fn skip_rest_of_line(chars: &mut Peekable<Chars<'_>>) {
    while chars.next_if(|&c| c != '\n').is_some() {}
}

fn expand_home(value: &str, home: Option<&Path>) -> String {
    match (value.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => {
            let home = home.to_string_lossy();
            format!("{}/{rest}", home.trim_end_matches('/'))
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        let (entries, warnings) = parse(text, None);
        assert_eq!(warnings, vec![], "unexpected warnings for {text:?}");
        entries.into_iter().map(|entry| (entry.name, entry.value)).collect()
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

    #[test]
    fn assignments_with_and_without_blanks() {
        let text = "a=1\n  b = two words  \nc\t=\t3\nd =\ne = x = y\n";
        assert_eq!(
            pairs(text),
            vec![
                pair("a", "1"),
                pair("b", "two words"),
                pair("c", "3"),
                pair("d", ""),
                pair("e", "x = y")
            ]
        );
    }

    #[test]
    fn hash_comment_lines() {
        let text = "# first\n   # indented\na = 1 # not a comment here\n#b = 2\n";
        assert_eq!(pairs(text), vec![pair("a", "1 # not a comment here")]);
    }

    #[test]
    fn slash_slash_comment_lines() {
        let text = "// first\n\t// b = 2\nurl = http://host/path\n";
        assert_eq!(pairs(text), vec![pair("url", "http://host/path")]);
    }

    #[test]
    fn line_comments_hide_block_comment_openers() {
        let text = "# see /* here\na = 1\n// and /* there\nb = 2\n";
        assert_eq!(pairs(text), vec![pair("a", "1"), pair("b", "2")]);
    }

    #[test]
    fn block_comments_on_one_line() {
        let text = "/* head */ a = 1\nb /* x */ = 2 /* tail */\nc = 3/**/4\n/* alone */\n";
        assert_eq!(pairs(text), vec![pair("a", "1"), pair("b", "2"), pair("c", "34")]);
    }

    #[test]
    fn block_comments_over_several_lines() {
        let text = "/* a = 1\n   b = 2 */\nc = 3 /* start\n d = 4\n end */\ne = 5\n";
        let (entries, warnings) = parse(text, None);
        assert!(warnings.is_empty());
        let found: Vec<(&str, &str, usize)> =
            entries.iter().map(|e| (e.name.as_str(), e.value.as_str(), e.line)).collect();
        assert_eq!(found, vec![("c", "3", 3), ("e", "5", 6)]);
    }

    #[test]
    fn block_comment_before_a_hash_comment_keeps_it_a_comment() {
        assert_eq!(pairs("/* x */ # a = 1\nb = 2"), vec![pair("b", "2")]);
    }

    #[test]
    fn name_after_a_multiline_comment_has_its_own_line_number() {
        let (entries, _) = parse("/* one\ntwo */\n\n  x = 1", None);
        assert_eq!(entries, vec![Entry { name: "x".into(), value: "1".into(), line: 4 }]);
    }

    #[test]
    fn unterminated_block_comment_warns_and_ends_the_file() {
        let (entries, warnings) = parse("a = 1\n/* open\nb = 2\n", None);
        assert_eq!(entries, vec![Entry { name: "a".into(), value: "1".into(), line: 1 }]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].line, 2);
    }

    #[test]
    fn blank_lines_and_crlf() {
        assert_eq!(pairs("\n\n  \t\r\na = 1\r\n\r\nb=2"), vec![pair("a", "1"), pair("b", "2")]);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_skipped() {
        let (entries, warnings) = parse("a = 1\njunk\n= 3\nmy name = 4\nb = 2\n", None);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert_eq!(warnings[0].to_string(), "line 2: ignored \"junk\": expected name = value");
    }

    #[test]
    fn a_name_given_twice_yields_both_in_order() {
        assert_eq!(pairs("a = 1\na = 2"), vec![pair("a", "1"), pair("a", "2")]);
    }

    #[test]
    fn tilde_slash_expands_to_home() {
        let home = Path::new("/home/user");
        let (entries, _) = parse("a = ~/ckpt\nb = ~user/x\nc = x~/y\nd = ~\n", Some(home));
        let values: Vec<&str> = entries.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["/home/user/ckpt", "~user/x", "x~/y", "~"]);
        let (entries, _) = parse("a = ~/ckpt", Some(Path::new("/home/user/")));
        assert_eq!(entries[0].value, "/home/user/ckpt");
        let (entries, _) = parse("a = ~/ckpt", Some(Path::new("/")));
        assert_eq!(entries[0].value, "/ckpt");
    }

    #[test]
    fn tilde_slash_is_kept_without_home() {
        assert_eq!(pairs("a = ~/ckpt"), vec![pair("a", "~/ckpt")]);
    }

    /// A piece of a rendered file that is not an assignment.
    fn filler() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[ \t]{1,4}",
            "[ \t]{0,3}#[^\n]{0,20}",
            "[ \t]{0,3}//[^\n]{0,20}",
            "[ \t]{0,3}/\\*[a-z =#\n]{0,20}\\*/[ \t]{0,3}",
        ]
    }

    /// A value as the parser gives it back: no line break, no block comment opener, no
    /// surrounding blanks, not starting with `~/`.
    fn value() -> impl Strategy<Value = String> {
        "([!-~]([ -~]{0,20}[!-~])?)?".prop_filter("not a value the parser changes", |value| {
            !value.contains("/*") && !value.starts_with("~/")
        })
    }

    fn assignment() -> impl Strategy<Value = (String, String, String, String, String, String)> {
        (
            "[a-z_][a-z0-9_]{0,24}",
            value(),
            "[ \t]{0,3}",
            "[ \t]{0,3}",
            "[ \t]{0,3}",
            prop_oneof![Just(String::new()), Just(" /* c */".to_string())],
        )
    }

    proptest! {
        #[test]
        fn rendered_pairs_parse_back(
            lines in proptest::collection::vec((filler(), assignment(), filler()), 0..12),
            crlf in any::<bool>(),
        ) {
            let newline = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            let mut expected = Vec::new();
            for (before, (name, value, lead, around_left, around_right, trailer), after) in &lines {
                text += &format!("{before}{newline}");
                text += &format!("{lead}{name}{around_left}={around_right}{value}{trailer}");
                text += newline;
                text += &format!("{after}{newline}");
                expected.push((name.clone(), value.clone()));
            }
            prop_assert_eq!(pairs(&text), expected);
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse(&text, Some(Path::new("/home/user")));
        }

        #[test]
        fn comment_syntax_soup_never_panics(text in "[a=#/*~ \t\r\n]{0,200}") {
            let (entries, warnings) = parse(&text, Some(Path::new("/home/user")));
            let lines = text.split('\n').count();
            prop_assert!(entries.iter().all(|entry| (1..=lines).contains(&entry.line)));
            prop_assert!(warnings.iter().all(|warning| (1..=lines).contains(&warning.line)));
        }
    }
}

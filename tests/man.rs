//! The man pages in `man/`: each renders with `man -l` without a troff warning, each
//! tool's page names every option the tool accepts and every exit code the README lists
//! for it, and opal_crs(7) describes every parameter with its default and help.
//!
//! Needs `man` (Debian: `man-db`, with `groff-base`); without it the tests say so and pass.

use opalcrs::params::PARAMS;
use opalcrs::tools::{self, OptionDef, MCA_OPTIONS};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The tools: name, page, and option table.
const TOOLS: &[(&str, &str, &[OptionDef])] = &[
    ("opal-checkpoint", "man/opal-checkpoint.1", tools::checkpoint::OPTIONS),
    ("opal-restart", "man/opal-restart.1", tools::restart::OPTIONS),
    ("opal-info", "man/opal-info.1", tools::info::OPTIONS),
    ("opal-run", "man/opal-run.1", tools::run::OPTIONS),
];

const CRS_PAGE: &str = "man/opal_crs.7";

fn page(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

/// Whether `man` can be run; if not, says why the test is skipped.
fn have_man(test: &str) -> bool {
    match Command::new("man").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED {test}: `man` is not available (install the Debian packages man-db and groff-base)"
            );
            false
        }
    }
}

/// The page rendered at 80 columns in the C locale (plain ASCII, no overstrike), with
/// troff warnings on; returns (text, stderr).
fn render(relative: &str) -> (String, String) {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page(relative))
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING")
        .env_remove("MANROFFOPT")
        .output()
        .unwrap_or_else(|e| panic!("running man -l {relative}: {e}"));
    assert!(out.status.success(), "man -l {relative} failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("rendered page is not UTF-8");
    // Without a terminal man-db strips formatting; strip any overstrike left anyway.
    let mut plain = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    (plain, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The body of section `title` of a rendered page: from its heading (a line that is
/// exactly `title`) to the next section heading (a line starting without indentation).
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n{title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?} in the rendered page"))
        + title.len()
        + 2;
    let rest = &text[start..];
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.starts_with(|c: char| c.is_ascii_uppercase()) {
            break;
        }
        offset += line.len();
    }
    &rest[..offset]
}

/// Whether `flag` (e.g. `--json`, `-q`) occurs in `text` as a flag of its own: not
/// preceded by a dash or a word character, not followed by a word character.
fn mentions_flag(text: &str, flag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(flag).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + flag.len()..].chars().next();
        !before.is_some_and(|c| c == '-' || word(c)) && !after.is_some_and(word)
    })
}

/// Whether `token` occurs in `text` delimited by non-word characters.
fn mentions_word(text: &str, token: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(token).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(word)
            && !text[at + token.len()..].chars().next().is_some_and(word)
    })
}

/// How an option name is written on the command line: `-x` for one letter, `--name`
/// for a tool's long option, `-mca` for the shared MCA options (as the original).
fn flag(name: &str, mca: bool) -> String {
    if name.len() == 1 || mca {
        format!("-{name}")
    } else {
        format!("--{name}")
    }
}

#[test]
fn every_page_renders_without_warnings() {
    if !have_man("every_page_renders_without_warnings") {
        return;
    }
    for relative in TOOLS.iter().map(|t| t.1).chain([CRS_PAGE]) {
        let (text, stderr) = render(relative);
        assert!(stderr.is_empty(), "man --warnings -l {relative} warned:\n{stderr}");
        for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
            assert!(text.contains(&format!("\n{heading}\n")), "{relative}: no {heading}");
        }
        if let Some(line) = text.lines().find(|l| l.chars().count() > 80) {
            panic!("{relative}: a rendered line is wider than 80 columns:\n{line}");
        }
    }
}

#[test]
fn each_tool_page_names_every_option() {
    if !have_man("each_tool_page_names_every_option") {
        return;
    }
    for (tool, relative, options) in TOOLS {
        let (text, _) = render(relative);
        let body = section(&text, "OPTIONS");
        let ours = options.iter().map(|o| (o, false));
        for (option, mca) in ours.chain(MCA_OPTIONS.iter().map(|o| (o, true))) {
            for name in option.names {
                let flag = flag(name, mca);
                assert!(
                    mentions_flag(body, &flag),
                    "{tool}: option {flag} is not in the OPTIONS section of {relative}"
                );
            }
            if let Some(value) = option.value {
                for word in value.split_whitespace() {
                    assert!(
                        mentions_word(body, word),
                        "{tool}: the value {word} of option {} is not named in {relative}",
                        option.names[0]
                    );
                }
            }
        }
    }
}

#[test]
fn opal_crs_page_describes_every_parameter() {
    if !have_man("opal_crs_page_describes_every_parameter") {
        return;
    }
    let (text, _) = render(CRS_PAGE);
    let body = section(&text, "PARAMETERS");
    let lines: Vec<&str> = body.lines().collect();
    // Whitespace-free text, so that wrapped lines compare equal to the help strings.
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let squeezed = squeeze(body);
    for def in PARAMS {
        let at = lines
            .iter()
            .position(|l| match l.trim().strip_prefix(def.name) {
                Some(rest) => rest.is_empty() || rest.trim_start().starts_with("Default: "),
                None => false,
            })
            .unwrap_or_else(|| panic!("parameter {} has no entry in opal_crs(7)", def.name));
        let default = if def.default.is_empty() { "(empty)" } else { def.default };
        // A short tag shares its line with the text that follows it.
        let next = match lines[at].trim().strip_prefix(def.name).map(str::trim) {
            Some(rest) if !rest.is_empty() => rest,
            _ => lines[at + 1..].iter().find(|l| !l.trim().is_empty()).copied().unwrap_or(""),
        };
        assert!(
            next.contains(&format!("Default: {default}.")),
            "parameter {}: expected \"Default: {default}.\" in opal_crs(7), found {next:?}",
            def.name
        );
        assert!(
            squeezed.contains(&squeeze(def.help)),
            "parameter {}: its help text is not in opal_crs(7) (regenerate the PARAMETERS section)",
            def.name
        );
    }
    // No entry for a parameter that does not exist.
    let entries = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l.trim().split_once("Default: ") {
            Some(("", _)) if i > 0 => Some(lines[i - 1].trim()),
            Some((tag, _)) => Some(tag.trim()),
            None => None,
        })
        .collect::<Vec<_>>();
    for name in entries {
        assert!(
            PARAMS.iter().any(|d| d.name == name),
            "opal_crs(7) describes {name:?}, which is not in PARAMS"
        );
    }
}

/// The exit codes of the README's `| exit | <tool> |` tables: tool → codes.
fn readme_exit_codes() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(page("README.md")).expect("README.md");
    let mut tables = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in readme.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if !line.trim_start().starts_with('|') {
            tables.extend(current.take());
            continue;
        }
        if cells.len() == 2 && cells[0] == "exit" {
            tables.extend(current.take());
            current = Some((cells[1].to_string(), Vec::new()));
        } else if let Some((_, codes)) = &mut current {
            if !cells[0].is_empty() && cells[0].chars().all(|c| c.is_ascii_digit()) {
                codes.push(cells[0].to_string());
            }
        }
    }
    tables.extend(current);
    tables
}

#[test]
fn exit_codes_of_the_readme_are_in_exit_status() {
    if !have_man("exit_codes_of_the_readme_are_in_exit_status") {
        return;
    }
    let tables = readme_exit_codes();
    for tool in ["opal-checkpoint", "opal-restart", "opal-run"] {
        assert!(tables.iter().any(|(t, _)| t == tool), "README has no exit table for {tool}");
    }
    for (tool, codes) in &tables {
        let (_, relative, _) = TOOLS
            .iter()
            .find(|t| t.0 == tool)
            .unwrap_or_else(|| panic!("README exit table for unknown tool {tool:?}"));
        assert!(!codes.is_empty(), "README exit table of {tool} lists no code");
        let (text, _) = render(relative);
        let body = section(&text, "EXIT STATUS");
        for code in codes {
            assert!(
                body.lines().any(|l| l.split_whitespace().next() == Some(code.as_str())),
                "{tool}: exit code {code} (README) has no entry in EXIT STATUS of {relative}"
            );
        }
    }
}

#[test]
fn make_install_installs_the_pages() {
    let makefile = std::fs::read_to_string(page("Makefile")).expect("Makefile");
    for relative in TOOLS.iter().map(|t| t.1).chain([CRS_PAGE]) {
        assert!(makefile.contains(relative), "the Makefile does not install {relative}");
    }
    assert!(makefile.contains("$(PREFIX)/share/man/man1"));
    assert!(makefile.contains("$(PREFIX)/share/man/man7"));
}

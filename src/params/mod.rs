//! MCA parameters: where libopalcrs reads its settings and which source wins.
//!
//! Precedence, highest first, as in Open MPI 1.7+:
//! 1. the override file (`mca_base_override_param_file`, default
//!    `<sysconfdir>/openmpi-mca-params-override.conf`);
//! 2. the tool command line (`-mca NAME VALUE`) and the environment (`OMPI_MCA_NAME`); for
//!    the same name the command line wins, and of a name given twice on it the last wins;
//! 3. parameter files: the AMCA files of `mca_base_param_file_prefix`, then the files of
//!    `mca_base_param_files` (default `$HOME/.openmpi/mca-params.conf` then
//!    `<sysconfdir>/openmpi-mca-params.conf`); the leftmost file wins, and within one file
//!    the last line wins;
//! 4. the default in [`PARAMS`].
//!
//! Everything comes in through [`Inputs`]; nothing here reads the process environment, so
//! callers and tests decide what is seen. Only the value that wins is validated: a bad
//! value that a higher source replaces does no harm. Names that are not ours are collected
//! in [`Params::unknown`], never an error. Lines of a file that cannot be read as an
//! assignment, and values the override file replaces, are reported in [`Params::warnings`]
//! (and logged); they do not stop the load.

pub mod file;
pub mod table;

pub use table::{canonical_name, lookup, markdown_table, CrsSelection, Kind, ParamDef, PARAMS};

use crate::codes;
use crate::error::{Error, Result};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) const ENV_PREFIX: &str = "OMPI_MCA_";
/// Launchers mark where an environment value really came from with
/// `OMPI_MCA_SOURCE_<name>=COMMAND_LINE` or `=FILE:<path>`.
const ENV_SOURCE_PREFIX: &str = "OMPI_MCA_SOURCE_";

/// Parameters that say which files to read. They are needed before any file is read, so
/// only the environment and the command line can set them.
const FILE_LOCATING: &[&str] = &[
    "mca_base_param_files",
    "mca_base_override_param_file",
    "mca_base_param_file_prefix",
    "mca_base_param_file_path",
];

/// Everything a load looks at, passed in explicitly.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The whole environment; only `OMPI_MCA_<name>` (and `OMPI_MCA_SOURCE_<name>`) entries
    /// are used.
    pub env: Vec<(String, String)>,
    /// `-mca NAME VALUE` pairs from a tool's command line, in the order given.
    pub cmdline: Vec<(String, String)>,
    /// `$HOME`, for the per-user parameter file and `~/` in file values.
    pub home: Option<PathBuf>,
    /// The current directory: relative file names are taken from it, and AMCA files are
    /// searched in it by default.
    pub cwd: PathBuf,
    pub sysconfdir: PathBuf,
    pub pkgdatadir: PathBuf,
}

/// Where a parameter's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    Environment,
    CommandLine,
    File(PathBuf),
    Override(PathBuf),
}

/// As `ompi_info` shows the data source.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default value"),
            Source::Environment => f.write_str("environment"),
            Source::CommandLine => f.write_str("command line"),
            Source::File(path) => write!(f, "file [{}]", path.display()),
            Source::Override(path) => write!(f, "override file [{}]", path.display()),
        }
    }
}

impl Source {
    /// Where a value of `name` from this source is written, as error messages name it.
    fn origin(&self, name: &str) -> String {
        match self {
            Source::Default => "default".to_string(),
            Source::Environment => format!("environment {ENV_PREFIX}{name}"),
            Source::CommandLine => format!("command line -mca {name}"),
            Source::File(path) => format!("file {}", path.display()),
            Source::Override(path) => format!("override file {}", path.display()),
        }
    }
}

/// The value and source of every parameter in [`PARAMS`], all validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Raw value and source, by table index.
    values: Vec<(String, Source)>,
    unknown: Vec<String>,
    warnings: Vec<String>,
}

impl Params {
    /// Every parameter at its default.
    pub fn defaults() -> Params {
        Params {
            values: PARAMS.iter().map(|def| (def.default.to_string(), Source::Default)).collect(),
            unknown: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Resolves every parameter from `inputs`. Fails (OPAL_ERR_BAD_PARAM) on a bad value
    /// for one of ours, and on a parameter file that was named explicitly but cannot be read.
    pub fn load(inputs: &Inputs) -> Result<Params> {
        let mut loader = Loader::default();
        let home = inputs.home.as_deref();

        let mut command = Layer::new();
        loader.read_environment(&inputs.env, &mut command);
        for (name, value) in &inputs.cmdline {
            let origin = Source::CommandLine.origin(name);
            loader.offer(&mut command, name, value, Source::CommandLine, origin);
        }

        let mut resolved = Layer::new();
        // Rightmost first, so that the leftmost file is applied last and wins.
        for file in param_files(inputs, &command)?.iter().rev() {
            loader.read_file(file, Source::File(file.path.clone()), home, &mut resolved)?;
        }
        let override_file = override_file(inputs, &command);
        resolved.overlay(command);
        let mut overrides = Layer::new();
        loader.read_file(
            &override_file,
            Source::Override(override_file.path.clone()),
            home,
            &mut overrides,
        )?;
        let replaced = resolved.overlay(overrides);

        let mut values = Vec::with_capacity(PARAMS.len());
        for (def, candidate) in PARAMS.iter().zip(resolved.0) {
            values.push(match candidate {
                None => (def.default.to_string(), Source::Default),
                Some(candidate) => {
                    check(def, &candidate.value, &candidate.origin)?;
                    (candidate.value, candidate.source)
                }
            });
        }
        let mut params = Params { values, unknown: Vec::new(), warnings: Vec::new() };
        if !params.bool("mca_base_suppress_override_warning") {
            for (def, lower, upper) in replaced {
                loader.warn(format!(
                    "parameter {}: {:?} from {} is replaced by {:?} from {}",
                    def.name, lower.value, lower.origin, upper.value, upper.origin
                ));
            }
        }
        params.unknown = loader.unknown;
        params.warnings = loader.warnings;
        Ok(params)
    }

    /// The table entry and raw value of `name` (or of its synonym).
    fn raw(&self, name: &str) -> (&'static ParamDef, &str) {
        let index = expect_index(name);
        (&PARAMS[index], &self.values[index].0)
    }

    /// The value of an `Int` parameter. Panics if `name` is not one.
    pub fn int(&self, name: &str) -> i64 {
        let (def, value) = self.raw(name);
        assert_eq!(def.kind, Kind::Int, "{name} is not an integer parameter");
        table::parse_int(value).expect("values are validated when set")
    }

    /// The value of a `Bool` parameter. Panics if `name` is not one.
    pub fn bool(&self, name: &str) -> bool {
        let (def, value) = self.raw(name);
        assert_eq!(def.kind, Kind::Bool, "{name} is not a boolean parameter");
        table::parse_bool(value).expect("values are validated when set")
    }

    /// The raw value of any parameter, as it was given.
    pub fn str(&self, name: &str) -> &str {
        self.raw(name).1
    }

    /// The value of a `Choice` parameter, spelled as in the table. Panics if `name` is not one.
    pub fn choice(&self, name: &str) -> &'static str {
        let (def, value) = self.raw(name);
        let Kind::Choice(choices) = def.kind else {
            panic!("{name} is not a choice parameter");
        };
        table::parse_choice(choices, value).expect("values are validated when set")
    }

    /// The `crs` parameter, read.
    pub fn crs_selection(&self) -> CrsSelection {
        table::parse_crs_list(self.str("crs")).expect("values are validated when set")
    }

    pub fn source(&self, name: &str) -> &Source {
        &self.values[expect_index(name)].1
    }

    /// Every parameter in table order, with its raw value and source.
    pub fn iter(&self) -> impl Iterator<Item = (&'static ParamDef, &str, &Source)> + '_ {
        PARAMS.iter().zip(&self.values).map(|(def, (value, source))| (def, value.as_str(), source))
    }

    /// Sets one parameter (a synonym is accepted) after checking the value.
    pub fn set(&mut self, name: &str, value: &str, source: Source) -> Result<()> {
        let index = index_of(name).ok_or_else(|| {
            Error::new(codes::OPAL_ERR_BAD_PARAM, format!("{name} is not a libopalcrs parameter"))
        })?;
        check(&PARAMS[index], value, &source.origin(name))?;
        self.values[index] = (value.to_string(), source);
        Ok(())
    }

    /// Names in the environment, on the command line or in files that are not ours, once
    /// each, in the order first seen.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    /// Problems that did not stop the load: skipped file lines, unreadable default files,
    /// file-locating parameters set in a file, values replaced by the override file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Table index of a parameter, by its name or a synonym.
fn index_of(name: &str) -> Option<usize> {
    let name = canonical_name(name);
    PARAMS.iter().position(|def| def.name == name)
}

/// Table index of a name the code itself asks for: one not in the table is a programming error.
fn expect_index(name: &str) -> usize {
    index_of(name).unwrap_or_else(|| panic!("{name} is not a libopalcrs parameter"))
}

fn check(def: &ParamDef, value: &str, origin: &str) -> Result<()> {
    if def.accepts(value) {
        return Ok(());
    }
    Err(Error::new(
        codes::OPAL_ERR_BAD_PARAM,
        format!(
            "bad value {value:?} for parameter {} (from {origin}): expected {}",
            def.name,
            def.accepted()
        ),
    ))
}

/// A value found for one of our parameters, not yet validated.
#[derive(Debug, Clone)]
struct Candidate {
    value: String,
    source: Source,
    /// Where the value was written, for messages.
    origin: String,
    /// Given under a deprecated name: loses to the current name from the same source.
    via_synonym: bool,
}

/// The values found at one precedence level, by table index.
struct Layer(Vec<Option<Candidate>>);

impl Layer {
    fn new() -> Layer {
        Layer(vec![None; PARAMS.len()])
    }

    fn put(&mut self, index: usize, candidate: Candidate) {
        let slot = &mut self.0[index];
        if let Some(previous) = slot {
            if candidate.via_synonym && !previous.via_synonym && previous.source == candidate.source
            {
                return;
            }
        }
        *slot = Some(candidate);
    }

    fn get(&self, name: &str) -> Option<&Candidate> {
        self.0[expect_index(name)].as_ref()
    }

    /// The value of `name` at this level, unless absent or blank (which means the default).
    fn get_set(&self, name: &str) -> Option<&Candidate> {
        self.get(name).filter(|candidate| !candidate.value.trim().is_empty())
    }

    /// Lets the values of `upper` win over ours. Returns, for each parameter whose value
    /// changes, the replaced and the replacing candidate.
    fn overlay(&mut self, upper: Layer) -> Vec<(&'static ParamDef, Candidate, Candidate)> {
        let mut replaced = Vec::new();
        for ((def, slot), upper) in PARAMS.iter().zip(&mut self.0).zip(upper.0) {
            let Some(upper) = upper else { continue };
            if let Some(lower) = slot.take().filter(|lower| lower.value != upper.value) {
                replaced.push((def, lower, upper.clone()));
            }
            *slot = Some(upper);
        }
        replaced
    }
}

/// A parameter file to read.
struct ParamFile {
    path: PathBuf,
    /// The parameter and source that asked for this file, whose absence is then an error.
    /// `None` for a default file, which may be missing.
    named_by: Option<String>,
}

/// The parameter files in order of precedence (leftmost wins): AMCA files, then the files
/// of `mca_base_param_files` or the default ones.
fn param_files(inputs: &Inputs, command: &Layer) -> Result<Vec<ParamFile>> {
    let mut files = amca_files(inputs, command)?;
    match command.get_set("mca_base_param_files") {
        // `none` turns off these files only; AMCA files named explicitly are still read.
        Some(list) if list.value.trim() == "none" => {}
        Some(list) => {
            let named_by = format!("mca_base_param_files from {}", list.origin);
            files.extend(split_list(&list.value, &[':', ',']).map(|name| ParamFile {
                path: inputs.cwd.join(name),
                named_by: Some(named_by.clone()),
            }));
        }
        None => {
            let user_file = inputs.home.as_ref().map(|home| home.join(".openmpi/mca-params.conf"));
            let system_file = inputs.sysconfdir.join("openmpi-mca-params.conf");
            files.extend(
                user_file
                    .into_iter()
                    .chain([system_file])
                    .map(|path| ParamFile { path, named_by: None }),
            );
        }
    }
    Ok(files)
}

/// The files of `mca_base_param_file_prefix`; relative names are looked up in the
/// directories of `mca_base_param_file_path`, and one that is in none of them is an error.
fn amca_files(inputs: &Inputs, command: &Layer) -> Result<Vec<ParamFile>> {
    let Some(prefix) = command.get("mca_base_param_file_prefix") else {
        return Ok(Vec::new());
    };
    let named_by = format!("mca_base_param_file_prefix from {}", prefix.origin);
    let search_path: Vec<PathBuf> = match command.get_set("mca_base_param_file_path") {
        Some(path) => split_list(&path.value, &[':']).map(|dir| inputs.cwd.join(dir)).collect(),
        None => vec![inputs.pkgdatadir.join("amca-param-sets"), inputs.cwd.clone()],
    };
    split_list(&prefix.value, &[','])
        .map(|name| {
            let path = if Path::new(name).is_absolute() {
                PathBuf::from(name)
            } else {
                search_path
                    .iter()
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
                    .ok_or_else(|| {
                        let searched: Vec<String> =
                            search_path.iter().map(|dir| dir.display().to_string()).collect();
                        Error::new(
                            codes::OPAL_ERR_NOT_FOUND,
                            format!(
                                "aggregate parameter file {name} (named by {named_by}) \
                                 is not in {}",
                                searched.join(":")
                            ),
                        )
                    })?
            };
            Ok(ParamFile { path, named_by: Some(named_by.clone()) })
        })
        .collect()
}

fn override_file(inputs: &Inputs, command: &Layer) -> ParamFile {
    match command.get_set("mca_base_override_param_file") {
        Some(name) => ParamFile {
            path: inputs.cwd.join(name.value.trim()),
            named_by: Some(format!("mca_base_override_param_file from {}", name.origin)),
        },
        None => ParamFile {
            path: inputs.sysconfdir.join("openmpi-mca-params-override.conf"),
            named_by: None,
        },
    }
}

/// The non-blank items of a list, blanks around each trimmed.
fn split_list<'a>(list: &'a str, separators: &'a [char]) -> impl Iterator<Item = &'a str> {
    list.split(separators).map(str::trim).filter(|item| !item.is_empty())
}

/// What a load collects besides the values.
#[derive(Default)]
struct Loader {
    unknown: Vec<String>,
    warnings: Vec<String>,
}

impl Loader {
    fn warn(&mut self, message: String) {
        log::warn!("{message}");
        self.warnings.push(message);
    }

    /// Puts `name = value` into `layer` if the name is ours, else notes it as unknown.
    fn offer(
        &mut self,
        layer: &mut Layer,
        name: &str,
        value: &str,
        source: Source,
        origin: String,
    ) {
        let Some(index) = index_of(name) else {
            if !self.unknown.iter().any(|known| known == name) {
                log::debug!("ignoring {name} from {origin}: not a libopalcrs parameter");
                self.unknown.push(name.to_string());
            }
            return;
        };
        let via_synonym = canonical_name(name) != name;
        layer.put(index, Candidate { value: value.to_string(), source, origin, via_synonym });
    }

    fn read_environment(&mut self, env: &[(String, String)], layer: &mut Layer) {
        for (key, value) in env {
            if key.starts_with(ENV_SOURCE_PREFIX) {
                continue;
            }
            let Some(name) = key.strip_prefix(ENV_PREFIX) else { continue };
            let marker = env
                .iter()
                .find(|(marker_key, _)| marker_key.strip_prefix(ENV_SOURCE_PREFIX) == Some(name))
                .map(|(_, marker)| marker.as_str());
            // The marker only changes the source shown; the value keeps this level's precedence.
            let source = match marker {
                Some("COMMAND_LINE") => Source::CommandLine,
                Some(marker) => match marker.strip_prefix("FILE:") {
                    Some(path) => Source::File(PathBuf::from(path)),
                    None => Source::Environment,
                },
                None => Source::Environment,
            };
            self.offer(layer, name, value, source, Source::Environment.origin(name));
        }
    }

    /// Reads one parameter file into `layer`. A missing or unreadable default file is
    /// skipped (unreadable with a warning); one named explicitly is an error.
    fn read_file(
        &mut self,
        file: &ParamFile,
        source: Source,
        home: Option<&Path>,
        layer: &mut Layer,
    ) -> Result<()> {
        let bytes = match fs::read(&file.path) {
            Ok(bytes) => bytes,
            Err(err) => {
                return match &file.named_by {
                    Some(named_by) => Err(Error::io(
                        format!(
                            "cannot read parameter file {} (named by {named_by})",
                            file.path.display()
                        ),
                        err,
                    )),
                    None if err.kind() == io::ErrorKind::NotFound => Ok(()),
                    None => {
                        self.warn(format!("skipped parameter file {}: {err}", file.path.display()));
                        Ok(())
                    }
                };
            }
        };
        log::debug!("reading parameter file {}", file.path.display());
        let (entries, file_warnings) = file::parse(&String::from_utf8_lossy(&bytes), home);
        // A file's origin does not depend on the parameter name.
        let file_origin = source.origin("");
        for warning in file_warnings {
            self.warn(format!("{file_origin}, {warning}"));
        }
        for entry in entries {
            let origin = format!("{file_origin}, line {}", entry.line);
            if FILE_LOCATING.contains(&canonical_name(&entry.name)) {
                self.warn(format!(
                    "{origin}: {} is ignored in a parameter file; \
                     set it in the environment or on the command line",
                    entry.name
                ));
                continue;
            }
            self.offer(layer, &entry.name, &entry.value, source.clone(), origin);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A private directory tree for one test (home/, cwd/, etc/, share/), removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
            let root = std::env::temp_dir()
                .join(format!("opalcrs-params-{}-{tag}-{unique}", std::process::id()));
            for dir in ["home/.openmpi", "cwd", "etc", "share/amca-param-sets"] {
                fs::create_dir_all(root.join(dir)).unwrap();
            }
            TestDir(root)
        }

        /// Writes `text` to `relative` (under the test root) and returns its path.
        fn write(&self, relative: &str, text: &str) -> PathBuf {
            let path = self.0.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.0.join(relative)
        }

        fn inputs(&self) -> Inputs {
            Inputs {
                env: Vec::new(),
                cmdline: Vec::new(),
                home: Some(self.path("home")),
                cwd: self.path("cwd"),
                sysconfdir: self.path("etc"),
                pkgdatadir: self.path("share"),
            }
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const USER_FILE: &str = "home/.openmpi/mca-params.conf";
    const SYSTEM_FILE: &str = "etc/openmpi-mca-params.conf";
    const OVERRIDE_FILE: &str = "etc/openmpi-mca-params-override.conf";

    /// An `OMPI_MCA_<name>` environment entry.
    fn var(name: &str, value: &str) -> (String, String) {
        (format!("{ENV_PREFIX}{name}"), value.to_string())
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

    fn load_error(inputs: &Inputs) -> Error {
        Params::load(inputs).expect_err("the load should fail")
    }

    #[test]
    fn defaults_are_the_table_defaults() {
        let params = Params::defaults();
        for (def, value, source) in params.iter() {
            assert_eq!(value, def.default);
            assert_eq!(source, &Source::Default);
        }
        assert_eq!(params.iter().count(), PARAMS.len());
        assert!(params.bool("ft_cr_enabled"));
        assert!(!params.bool("crs_self_do_restart"));
        assert_eq!(params.int("crs_self_priority"), 20);
        assert_eq!(params.int("opal_cr_signal"), 10);
        assert_eq!(params.str("crs_self_prefix"), "opal_crs_self_user");
        assert_eq!(params.choice("crs_criu_pidns"), "auto");
        assert_eq!(params.crs_selection(), CrsSelection { exclude: false, components: vec![] });
        assert!(params.unknown().is_empty() && params.warnings().is_empty());
    }

    #[test]
    fn nothing_set_and_no_files_gives_the_defaults() {
        let dir = TestDir::new("empty");
        assert_eq!(Params::load(&dir.inputs()).unwrap(), Params::defaults());
    }

    #[test]
    fn the_four_levels_of_precedence() {
        let dir = TestDir::new("precedence");
        let user_file = dir.write(
            USER_FILE,
            "crs_self_priority = 1\ncrs_none_priority = 2\n\
             crs_criu_priority = 3\nopal_cr_verbose = 4\n",
        );
        let override_file = dir.write(OVERRIDE_FILE, "opal_cr_verbose = 44\n");
        let mut inputs = dir.inputs();
        inputs.env = vec![
            var("crs_none_priority", "12"),
            var("crs_criu_priority", "13"),
            var("opal_cr_verbose", "14"),
        ];
        inputs.cmdline = vec![pair("crs_criu_priority", "33"), pair("opal_cr_verbose", "34")];
        let params = Params::load(&inputs).unwrap();
        let expect = |name: &str, value: i64, source: Source| {
            assert_eq!((params.int(name), params.source(name)), (value, &source), "{name}");
        };
        expect("crs_base_verbose", 0, Source::Default);
        expect("crs_self_priority", 1, Source::File(user_file));
        expect("crs_none_priority", 12, Source::Environment);
        expect("crs_criu_priority", 33, Source::CommandLine);
        expect("opal_cr_verbose", 44, Source::Override(override_file));
    }

    #[test]
    fn command_line_wins_over_environment_and_its_last_pair_wins() {
        let dir = TestDir::new("cmdline");
        let mut inputs = dir.inputs();
        inputs.cmdline = vec![pair("crs", "self"), pair("crs", "criu")];
        inputs.env = vec![var("crs", "none")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(params.str("crs"), "criu");
        assert_eq!(params.source("crs"), &Source::CommandLine);
    }

    #[test]
    fn the_user_file_wins_over_the_system_file() {
        let dir = TestDir::new("default-files");
        let user_file = dir.write(USER_FILE, "crs = self\n");
        let system_file = dir.write(SYSTEM_FILE, "crs = criu\ncrs_criu_log = sys.log\n");
        let params = Params::load(&dir.inputs()).unwrap();
        assert_eq!((params.str("crs"), params.source("crs")), ("self", &Source::File(user_file)));
        assert_eq!(params.source("crs_criu_log"), &Source::File(system_file));

        let mut without_home = dir.inputs();
        without_home.home = None;
        assert_eq!(Params::load(&without_home).unwrap().str("crs"), "criu");
    }

    #[test]
    fn the_leftmost_named_file_wins() {
        let dir = TestDir::new("leftmost");
        let a = dir.write("cwd/a.conf", "crs_self_priority = 1\n");
        let b = dir.write("cwd/b.conf", "crs_self_priority = 2\ncrs_none_priority = 2\n");
        let c = dir.write(
            "elsewhere/c.conf",
            "crs_self_priority = 3\ncrs_none_priority = 3\ncrs_criu_priority = 3\n",
        );
        dir.write(USER_FILE, "opal_cr_verbose = 9\n");
        let mut inputs = dir.inputs();
        // Relative names are taken from cwd; ':' and ',' both separate.
        let list = format!("a.conf: b.conf,{}", c.display());
        inputs.env = vec![var("mca_base_param_files", &list)];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(
            (params.int("crs_self_priority"), params.source("crs_self_priority")),
            (1, &Source::File(a))
        );
        assert_eq!(
            (params.int("crs_none_priority"), params.source("crs_none_priority")),
            (2, &Source::File(b))
        );
        assert_eq!(
            (params.int("crs_criu_priority"), params.source("crs_criu_priority")),
            (3, &Source::File(c))
        );
        // Naming files replaces the default list.
        assert_eq!(params.source("opal_cr_verbose"), &Source::Default);
        assert_eq!(params.str("mca_base_param_files"), list);
        assert_eq!(params.source("mca_base_param_files"), &Source::Environment);
    }

    #[test]
    fn the_last_line_of_a_file_wins() {
        let dir = TestDir::new("last-line");
        dir.write(USER_FILE, "crs = self\ncrs = criu\n");
        assert_eq!(Params::load(&dir.inputs()).unwrap().str("crs"), "criu");
    }

    #[test]
    fn none_turns_off_parameter_files() {
        let dir = TestDir::new("none");
        dir.write(USER_FILE, "crs = self\n");
        dir.write(SYSTEM_FILE, "crs = criu\n");
        let mut inputs = dir.inputs();
        inputs.cmdline = vec![pair("mca_base_param_files", " none ")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(params.source("crs"), &Source::Default);
    }

    #[test]
    fn an_empty_file_list_means_the_default_files() {
        let dir = TestDir::new("empty-list");
        dir.write(USER_FILE, "crs = self\n");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("mca_base_param_files", "")];
        assert_eq!(Params::load(&inputs).unwrap().str("crs"), "self");
    }

    #[test]
    fn a_named_file_that_cannot_be_read_is_an_error() {
        let dir = TestDir::new("named-missing");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("mca_base_param_files", "missing.conf")];
        let err = load_error(&inputs);
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        let missing = dir.path("cwd/missing.conf");
        assert!(err
            .message()
            .contains(&format!("cannot read parameter file {}", missing.display())));
        assert!(err.message().contains(
            "named by mca_base_param_files from environment OMPI_MCA_mca_base_param_files"
        ));

        inputs.env = vec![var("mca_base_param_files", &dir.path("cwd").display().to_string())];
        assert!(load_error(&inputs).message().contains("cannot read parameter file"));
    }

    #[test]
    fn an_unreadable_default_file_is_skipped_with_a_warning() {
        let dir = TestDir::new("default-unreadable");
        // A directory where the file should be: reading it fails, but not as "not found".
        fs::create_dir_all(dir.path(USER_FILE)).unwrap();
        dir.write(SYSTEM_FILE, "crs = self\n");
        let params = Params::load(&dir.inputs()).unwrap();
        assert_eq!(params.str("crs"), "self");
        assert_eq!(params.warnings().len(), 1);
        assert!(params.warnings()[0].starts_with("skipped parameter file"));
    }

    #[test]
    fn amca_files_are_found_on_the_search_path_and_win_over_other_files() {
        let dir = TestDir::new("amca");
        let ft = dir.write(
            "share/amca-param-sets/ft-enable-cr",
            "# the shipped set\nft_cr_enabled = 0\ncrs = self\nopal_cr_verbose = 5\n",
        );
        let local = dir.write("cwd/local-set", "opal_cr_verbose = 6\ncrs_self_prefix = mine\n");
        let user_file = dir.write(USER_FILE, "opal_cr_verbose = 1\ncrs_self_priority = 7\n");
        let mut inputs = dir.inputs();
        inputs.cmdline = vec![pair("mca_base_param_file_prefix", "ft-enable-cr,local-set")];
        let params = Params::load(&inputs).unwrap();
        assert!(!params.bool("ft_cr_enabled"));
        assert_eq!(params.source("ft_cr_enabled"), &Source::File(ft.clone()));
        assert_eq!(
            (params.int("opal_cr_verbose"), params.source("opal_cr_verbose")),
            (5, &Source::File(ft))
        );
        assert_eq!(params.source("crs_self_prefix"), &Source::File(local));
        assert_eq!(params.source("crs_self_priority"), &Source::File(user_file));

        // An explicit search path replaces the default one.
        let other = dir.write("sets/ft-enable-cr", "crs = criu\n");
        inputs.env = vec![var(
            "mca_base_param_file_path",
            &format!("/nonexistent:{}", dir.path("sets").display()),
        )];
        inputs.cmdline = vec![pair("mca_base_param_file_prefix", "ft-enable-cr")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(
            (params.str("crs"), params.source("crs")),
            ("criu", &Source::File(other.clone()))
        );

        // An absolute name is used as it is.
        inputs.env.clear();
        inputs.cmdline = vec![pair("mca_base_param_file_prefix", &other.display().to_string())];
        assert_eq!(Params::load(&inputs).unwrap().str("crs"), "criu");
    }

    #[test]
    fn amca_files_are_read_even_when_param_files_is_none() {
        let dir = TestDir::new("amca-none");
        dir.write("share/amca-param-sets/set", "crs = self\n");
        dir.write(USER_FILE, "crs_self_priority = 7\n");
        let mut inputs = dir.inputs();
        inputs.env =
            vec![var("mca_base_param_files", "none"), var("mca_base_param_file_prefix", "set")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(params.str("crs"), "self");
        assert_eq!(params.source("crs_self_priority"), &Source::Default);
    }

    #[test]
    fn a_missing_amca_file_is_an_error() {
        let dir = TestDir::new("amca-missing");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("mca_base_param_file_prefix", "no-such-set")];
        let err = load_error(&inputs);
        assert_eq!(err.code(), codes::OPAL_ERR_NOT_FOUND);
        assert!(err.message().starts_with(
            "aggregate parameter file no-such-set \
             (named by mca_base_param_file_prefix from environment"
        ));
        assert!(err.message().contains(&dir.path("share/amca-param-sets").display().to_string()));

        inputs.env = vec![var("mca_base_param_file_prefix", "/nonexistent/set")];
        assert!(load_error(&inputs)
            .message()
            .contains("cannot read parameter file /nonexistent/set"));
    }

    #[test]
    fn the_override_file_wins_and_says_what_it_replaced() {
        let dir = TestDir::new("override");
        dir.write(USER_FILE, "crs = criu\n");
        let named = dir.write("cwd/site-override.conf", "crs = self\nopal_cr_signal = 12\n");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("opal_cr_signal", "12"), var("crs_base_verbose", "3")];
        inputs.cmdline = vec![pair("mca_base_override_param_file", "site-override.conf")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(
            (params.str("crs"), params.source("crs")),
            ("self", &Source::Override(named.clone()))
        );
        assert_eq!(params.source("opal_cr_signal"), &Source::Override(named.clone()));
        assert_eq!(params.source("crs_base_verbose"), &Source::Environment);
        // Only the value that changed is reported.
        let expected = format!(
            "parameter crs: \"criu\" from file {}, line 1 \
             is replaced by \"self\" from override file {}, line 1",
            dir.path(USER_FILE).display(),
            named.display()
        );
        assert_eq!(params.warnings(), [expected]);

        inputs.env.push(var("mca_base_suppress_override_warning", "yes"));
        assert!(Params::load(&inputs).unwrap().warnings().is_empty());
    }

    #[test]
    fn the_default_override_file_is_optional_but_a_named_one_is_not() {
        let dir = TestDir::new("override-missing");
        let default_override = dir.write(OVERRIDE_FILE, "crs_criu_log = site.log\n");
        let params = Params::load(&dir.inputs()).unwrap();
        assert_eq!(params.source("crs_criu_log"), &Source::Override(default_override.clone()));
        fs::remove_file(default_override).unwrap();
        assert!(Params::load(&dir.inputs()).is_ok());

        let mut inputs = dir.inputs();
        inputs.env = vec![var("mca_base_override_param_file", "/nonexistent/override.conf")];
        let err = load_error(&inputs);
        assert!(err.message().contains(
            "cannot read parameter file /nonexistent/override.conf \
             (named by mca_base_override_param_file from environment"
        ));
    }

    #[test]
    fn source_markers_in_the_environment() {
        let dir = TestDir::new("markers");
        let mut inputs = dir.inputs();
        inputs.env = vec![
            (format!("{ENV_SOURCE_PREFIX}crs"), "COMMAND_LINE".to_string()),
            var("crs", "self"),
            var("crs_self_prefix", "app"),
            (format!("{ENV_SOURCE_PREFIX}crs_self_prefix"), "FILE:/etc/site.conf".to_string()),
            var("crs_criu_log", "x.log"),
            (format!("{ENV_SOURCE_PREFIX}crs_criu_log"), "SOMETHING".to_string()),
        ];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(params.source("crs"), &Source::CommandLine);
        assert_eq!(
            params.source("crs_self_prefix"),
            &Source::File(PathBuf::from("/etc/site.conf"))
        );
        assert_eq!(params.source("crs_criu_log"), &Source::Environment);
        assert!(params.unknown().is_empty());
    }

    #[test]
    fn a_bad_integer_names_parameter_source_and_range() {
        let dir = TestDir::new("bad-int");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("opal_cr_signal", "abc")];
        let err = load_error(&inputs);
        assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
        assert_eq!(
            err.message(),
            "bad value \"abc\" for parameter opal_cr_signal \
             (from environment OMPI_MCA_opal_cr_signal): \
             expected an integer 0..64"
        );
        inputs.env = vec![var("opal_cr_signal", "65")];
        assert!(load_error(&inputs).message().ends_with("expected an integer 0..64"));
        inputs.env = vec![var("crs_base_snapshot_keep", "-1")];
        assert!(load_error(&inputs).message().ends_with("expected an integer >= 0"));
        inputs.env = vec![var("crs_self_priority", "99999999999999999999")];
        assert!(load_error(&inputs).message().ends_with("expected an integer"));
    }

    #[test]
    fn integers_may_have_a_sign_and_blanks() {
        let dir = TestDir::new("int-forms");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("crs_self_priority", " +5 "), var("crs_none_priority", "-2")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!((params.int("crs_self_priority"), params.str("crs_self_priority")), (5, " +5 "));
        assert_eq!(params.int("crs_none_priority"), -2);
    }

    #[test]
    fn a_bad_boolean_names_the_accepted_words() {
        let dir = TestDir::new("bad-bool");
        let mut inputs = dir.inputs();
        inputs.cmdline = vec![pair("ft_cr_enabled", "maybe")];
        let err = load_error(&inputs);
        assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
        assert!(err.message().starts_with(
            "bad value \"maybe\" for parameter ft_cr_enabled \
             (from command line -mca ft_cr_enabled): expected a boolean"
        ));
        let accepted = lookup("ft_cr_enabled").unwrap().accepted();
        assert!(err.message().ends_with(&accepted));
        assert!(accepted.contains("disabled"));
    }

    #[test]
    fn booleans_keep_their_spelling() {
        let dir = TestDir::new("bool-forms");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("ft_cr_enabled", "Disabled"), var("opal_cr_is_tool", "7")];
        let params = Params::load(&inputs).unwrap();
        assert!(!params.bool("ft_cr_enabled"));
        assert_eq!(params.str("ft_cr_enabled"), "Disabled");
        assert!(params.bool("opal_cr_is_tool"));
    }

    #[test]
    fn a_bad_choice_from_a_file_names_file_and_line() {
        let dir = TestDir::new("bad-choice");
        let user_file = dir.write(USER_FILE, "# pidns\n\ncrs_criu_pidns = sometimes\n");
        let err = load_error(&dir.inputs());
        assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
        assert_eq!(
            err.message(),
            format!(
                "bad value \"sometimes\" for parameter crs_criu_pidns (from file {}, line 3): \
                 expected one of auto, always, never",
                user_file.display()
            )
        );
        dir.write(USER_FILE, "crs_criu_pidns = NEVER\n");
        assert_eq!(Params::load(&dir.inputs()).unwrap().choice("crs_criu_pidns"), "never");
    }

    #[test]
    fn a_bad_component_list_names_the_components() {
        let dir = TestDir::new("bad-crs");
        let mut inputs = dir.inputs();
        for bad in ["self,blrc", "self,^criu", "^"] {
            inputs.env = vec![var("crs", bad)];
            let err = load_error(&inputs);
            assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
            assert!(err.message().contains("self, criu, none, blcr, dmtcp"), "{}", err.message());
        }
        inputs.env = vec![var("crs", "^none,criu")];
        let selection = Params::load(&inputs).unwrap().crs_selection();
        assert_eq!(selection, CrsSelection { exclude: true, components: vec!["none", "criu"] });
    }

    #[test]
    fn a_bad_snapshot_name_is_refused() {
        let dir = TestDir::new("bad-name");
        let mut inputs = dir.inputs();
        for bad in ["a/b", "..", ".", "x..y"] {
            inputs.env = vec![var("crs_base_snapshot_name", bad)];
            let err = load_error(&inputs);
            assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
            assert!(err.message().contains("without '/' or '..'"), "{}", err.message());
        }
    }

    #[test]
    fn a_bad_value_that_is_replaced_does_no_harm() {
        let dir = TestDir::new("shadowed");
        dir.write(USER_FILE, "opal_cr_signal = abc\n");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("opal_cr_signal", "12")];
        assert_eq!(Params::load(&inputs).unwrap().int("opal_cr_signal"), 12);
    }

    #[test]
    fn unknown_names_are_collected_once_and_ignored() {
        let dir = TestDir::new("unknown");
        dir.write(USER_FILE, "rmaps_base_mapping_policy = core\nbtl = self\n");
        let mut inputs = dir.inputs();
        inputs.env = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            var("btl", "tcp,self"),
            var("crs_blcr_priority", "not even a number"),
            (format!("{ENV_SOURCE_PREFIX}btl"), "COMMAND_LINE".to_string()),
        ];
        inputs.cmdline = vec![pair("pml", "ob1"), pair("btl", "tcp")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(
            params.unknown(),
            ["btl", "crs_blcr_priority", "pml", "rmaps_base_mapping_policy"]
        );
        assert!(params.iter().all(|(_, _, source)| source == &Source::Default));
    }

    #[test]
    fn the_deprecated_name_of_the_file_list_is_accepted() {
        let dir = TestDir::new("synonym");
        let a = dir.write("cwd/a.conf", "crs = self\n");
        dir.write("cwd/b.conf", "crs = criu\n");
        let mut inputs = dir.inputs();
        inputs.env = vec![var("mca_param_files", "a.conf")];
        let params = Params::load(&inputs).unwrap();
        assert_eq!(params.str("mca_base_param_files"), "a.conf");
        assert_eq!((params.str("crs"), params.source("crs")), ("self", &Source::File(a)));
        assert!(params.unknown().is_empty());

        // The current name wins over the old one from the same source, whatever the order.
        inputs.env = vec![var("mca_base_param_files", "b.conf"), var("mca_param_files", "a.conf")];
        assert_eq!(Params::load(&inputs).unwrap().str("crs"), "criu");
        // The command line still wins over the environment.
        inputs.cmdline = vec![pair("mca_param_files", "a.conf")];
        assert_eq!(Params::load(&inputs).unwrap().str("crs"), "self");
    }

    #[test]
    fn file_locating_parameters_in_files_are_ignored_with_a_warning() {
        let dir = TestDir::new("locating-in-file");
        dir.write(
            USER_FILE,
            "mca_base_param_files = /nonexistent.conf\nmca_param_files = x\ncrs = self\n",
        );
        let params = Params::load(&dir.inputs()).unwrap();
        assert_eq!(params.source("mca_base_param_files"), &Source::Default);
        assert_eq!(params.str("crs"), "self");
        assert_eq!(params.warnings().len(), 2);
        assert!(params.warnings()[0].ends_with(
            "line 1: mca_base_param_files is ignored in a parameter file; \
             set it in the environment or on the command line"
        ));
    }

    #[test]
    fn file_syntax_problems_are_warnings() {
        let dir = TestDir::new("syntax");
        let user_file = dir.write(USER_FILE, "crs = self\njunk line\ncrs_self_priority = 3\n");
        let params = Params::load(&dir.inputs()).unwrap();
        assert_eq!(params.int("crs_self_priority"), 3);
        assert_eq!(
            params.warnings(),
            [format!(
                "file {}, line 2: ignored \"junk line\": expected name = value",
                user_file.display()
            )]
        );
    }

    #[test]
    fn tilde_in_file_values_is_the_home_given() {
        let dir = TestDir::new("tilde");
        dir.write(USER_FILE, "crs_base_snapshot_dir = ~/ckpt\n");
        let params = Params::load(&dir.inputs()).unwrap();
        let expected = format!("{}/ckpt", dir.path("home").display());
        assert_eq!(params.str("crs_base_snapshot_dir"), expected);
    }

    #[test]
    fn set_checks_the_value() {
        let mut params = Params::defaults();
        params.set("crs_criu_pidns", "always", Source::CommandLine).unwrap();
        assert_eq!(params.choice("crs_criu_pidns"), "always");
        assert_eq!(params.source("crs_criu_pidns"), &Source::CommandLine);

        let err = params.set("opal_cr_checkpoint_interval", "-5", Source::Environment).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);
        assert_eq!(
            err.message(),
            "bad value \"-5\" for parameter opal_cr_checkpoint_interval \
             (from environment OMPI_MCA_opal_cr_checkpoint_interval): expected an integer >= 0"
        );
        assert_eq!(params.int("opal_cr_checkpoint_interval"), 0);

        let err = params.set("no_such_param", "1", Source::Default).unwrap_err();
        assert_eq!(err.code(), codes::OPAL_ERR_BAD_PARAM);

        params.set("mca_param_files", "none", Source::CommandLine).unwrap();
        assert_eq!(params.str("mca_base_param_files"), "none");
    }

    #[test]
    fn sources_display_as_ompi_info_shows_them() {
        assert_eq!(Source::Default.to_string(), "default value");
        assert_eq!(Source::Environment.to_string(), "environment");
        assert_eq!(Source::CommandLine.to_string(), "command line");
        assert_eq!(Source::File("/etc/a.conf".into()).to_string(), "file [/etc/a.conf]");
        assert_eq!(
            Source::Override("/etc/o.conf".into()).to_string(),
            "override file [/etc/o.conf]"
        );
    }

    #[test]
    #[should_panic(expected = "crs_blcr_priority is not a libopalcrs parameter")]
    fn a_getter_panics_on_a_name_not_in_the_table() {
        Params::defaults().int("crs_blcr_priority");
    }

    #[test]
    #[should_panic(expected = "crs is not an integer parameter")]
    fn a_getter_panics_on_the_wrong_kind() {
        Params::defaults().int("crs");
    }
}

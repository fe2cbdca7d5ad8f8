//! `self`: the program saves and restores its own state through three callbacks,
//! `<prefix>_checkpoint(char **restart_cmd)`, `<prefix>_continue(void)` and
//! `<prefix>_restart(void)`. Registered callbacks win over symbol lookup. A restart
//! executes the recorded command in the recorded working directory; the new image's
//! `opal_init` then runs the restart callback.

use crate::codes::*;
use crate::error::{Error, Result};
use crate::framework::{CheckpointJob, CheckpointOutcome, Component, RestartOutcome, RestartPlan};
use crate::params::{Params, Source};
use crate::runtime::callbacks::{
    self, opal_crs_base_self_checkpoint_fn_t as CheckpointFn,
    opal_crs_base_self_continue_fn_t as ContinueFn, opal_crs_base_self_restart_fn_t as RestartFn,
};
use std::ffi::{CStr, CString, OsString};
use std::os::unix::process::CommandExt;
use std::process::Command;

pub struct SelfComponent;

/// Environment variables that hand a restart over to the new image; `opal_init`
/// consumes and removes them so the program's own children do not see them.
pub const ENV_DO_RESTART: &str = "OMPI_MCA_crs_self_do_restart";
pub const ENV_SERIES: &str = "OPALCRS_SERIES";
pub const ENV_SNAPSHOT_DIR: &str = "OPALCRS_SNAPSHOT_DIR";

struct Resolved {
    checkpoint: CheckpointFn,
    cont: ContinueFn,
    restart: RestartFn,
}

/// `dlsym(RTLD_DEFAULT, "<prefix>_<suffix>")`, NULL when absent or the prefix is empty.
fn lookup(prefix: &str, suffix: &str) -> *mut libc::c_void {
    match CString::new(format!("{prefix}_{suffix}")) {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
        Ok(name) if !prefix.is_empty() => unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) },
        _ => std::ptr::null_mut(),
    }
}

fn resolve(prefix: &str) -> Resolved {
    let registered = callbacks::read();
    // SAFETY: the symbols are the program's callbacks with the documented prototypes;
    // a NULL pointer becomes None.
    unsafe {
        Resolved {
            checkpoint: registered
                .self_checkpoint
                .or_else(|| std::mem::transmute::<_, CheckpointFn>(lookup(prefix, "checkpoint"))),
            cont: registered
                .self_continue
                .or_else(|| std::mem::transmute::<_, ContinueFn>(lookup(prefix, "continue"))),
            restart: registered
                .self_restart
                .or_else(|| std::mem::transmute::<_, RestartFn>(lookup(prefix, "restart"))),
        }
    }
}

impl Component for SelfComponent {
    fn name(&self) -> &'static str {
        "self"
    }

    fn priority(&self, params: &Params) -> i64 {
        params.int("crs_self_priority")
    }

    fn query(&self, params: &Params) -> std::result::Result<(), String> {
        let prefix = params.str("crs_self_prefix");
        if resolve(prefix).checkpoint.is_some() {
            return Ok(());
        }
        let mut why = format!(
            "no checkpoint callback: {prefix}_checkpoint is neither registered nor exported"
        );
        // Reading the executable costs time, so only when someone will read the answer.
        let explain = params.int("crs_self_verbose") > 0
            || params.int("crs_base_verbose") > 0
            || params.str("crs").trim() == "self";
        if explain && crate::elf::exe_defines_symbol(&format!("{prefix}_checkpoint")) {
            why.push_str(" (the program defines it but does not export it: link with -Wl,--export-dynamic, as `pkg-config --libs opalcrs` does)");
        }
        Err(why)
    }

    fn init(&self, params: &Params) -> Result<()> {
        if !params.bool("crs_self_do_restart") {
            return Ok(());
        }
        let prefix = params.str("crs_self_prefix");
        match resolve(prefix).restart {
            Some(restart) => {
                log::debug!(target: "crs", "crs:self: calling {prefix}_restart()");
                // SAFETY: the program's restart callback.
                unsafe { restart() };
            }
            None => {
                log::info!(target: "crs", "crs:self: restarted, but no {prefix}_restart callback to call")
            }
        }
        Ok(())
    }

    fn checkpoint(&self, job: &mut CheckpointJob) -> Result<CheckpointOutcome> {
        let prefix = job.params.str("crs_self_prefix").to_string();
        let callbacks = resolve(&prefix);
        let checkpoint = callbacks.checkpoint.ok_or_else(|| {
            Error::new(OPAL_ERROR, format!("self: no {prefix}_checkpoint callback"))
        })?;
        let who = if callbacks::read().self_checkpoint.is_some() {
            "registered checkpoint callback".to_string()
        } else {
            format!("checkpoint callback {prefix}_checkpoint")
        };
        let mut restart_cmd: *mut libc::c_char = std::ptr::null_mut();
        // SAFETY: the program's checkpoint callback; it may set restart_cmd to a malloc'ed string.
        let rc = unsafe { checkpoint(&mut restart_cmd) };
        // The string is ours to free whatever the callback returned.
        let command = (!restart_cmd.is_null()).then(|| {
            // SAFETY: a NUL-terminated string from malloc, handed over to us.
            unsafe {
                let text = CStr::from_ptr(restart_cmd).to_string_lossy().into_owned();
                libc::free(restart_cmd.cast());
                text
            }
        });
        if rc != OPAL_SUCCESS {
            let name = code_name(rc).map_or_else(String::new, |name| format!(" ({name})"));
            return Err(Error::new(OPAL_ERROR, format!("self: {who} returned {rc}{name}")));
        }
        let command = command.ok_or_else(|| {
            Error::new(
                OPAL_ERROR,
                format!("self: {prefix}_checkpoint returned no restart command: set *restart_cmd to a malloc'ed command line"),
            )
        })?;
        if command.trim().is_empty() || command.contains('\n') {
            return Err(Error::new(
                OPAL_ERROR,
                format!(
                    "self: {prefix}_checkpoint returned an unusable restart command {command:?}"
                ),
            ));
        }
        job.metadata.context.push(command);
        job.metadata.self_prefix = Some(prefix);
        job.metadata.preload = crate::runtime::preloaded_from();
        if let Some(cont) = callbacks.cont {
            // SAFETY: the program's continue callback.
            unsafe { cont() };
        }
        Ok(CheckpointOutcome::Continue)
    }

    fn restart(&self, plan: &RestartPlan, spawn_child: bool) -> Result<RestartOutcome> {
        let line = plan.metadata.context.first().ok_or_else(|| {
            Error::new(
                OPAL_ERR_NOT_FOUND,
                format!("snapshot {} has no restart command (# CONTEXT:)", plan.dir.display()),
            )
        })?;
        let argv = split_words(line).map_err(|why| {
            Error::new(
                OPAL_ERR_BAD_PARAM,
                format!("restart command {line:?} of {}: {why}", plan.dir.display()),
            )
        })?;
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env_clear().envs(restart_environment(plan));
        if plan.owner.needs_switch() {
            // Root restarts another user's snapshot: the command (and a recorded preload
            // library, which its loader maps) runs as that user. The working directory is
            // entered as the user too, so after the switch (Command enters it before).
            command.envs(plan.owner.environment());
            let owner = plan.owner.clone();
            let cwd = plan.metadata.cwd.as_deref().map(crate::owner::c_path).transpose()?;
            // SAFETY: the closure only makes system calls on data prepared before the fork.
            unsafe {
                command.pre_exec(move || {
                    owner.become_owner()?;
                    match &cwd {
                        Some(cwd) if libc::chdir(cwd.as_ptr()) != 0 => {
                            Err(std::io::Error::last_os_error())
                        }
                        _ => Ok(()),
                    }
                });
            }
        } else if let Some(cwd) = &plan.metadata.cwd {
            command.current_dir(cwd);
        }
        if plan.end_with_parent {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: the closure only makes system calls; it runs after the user change.
            unsafe { command.pre_exec(move || crate::framework::end_with_parent(parent)) };
        }
        if plan.verbose {
            let cwd = plan.metadata.cwd.as_deref().unwrap_or(std::path::Path::new("."));
            log::info!(target: "crs", "crs:self: restarting `{line}` in {}", cwd.display());
        }
        let exec_error = |e: std::io::Error| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                OPAL_ERR_NOT_FOUND
            } else {
                OPAL_ERR_IN_ERRNO
            };
            Error::new(code, format!("cannot execute restart command {:?}: {e}", argv[0]))
        };
        if spawn_child {
            let child = command.spawn().map_err(exec_error)?;
            Ok(RestartOutcome::Spawned { pid: child.id() as i32, note: None })
        } else {
            Err(exec_error(command.exec()))
        }
    }
}

/// The restarted program's environment: ours without any C/R parameters, then the
/// parameters recorded in the snapshot, those given to the restart, then the one-shot
/// restart hand-over.
fn restart_environment(plan: &RestartPlan) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !k.starts_with("OMPI_MCA_") && !k.starts_with("OPALCRS_")
        })
        .collect();
    // A program that had the library preloaded gets it again, so its restart callback runs.
    if let Some(library) = &plan.metadata.preload {
        let others = std::env::var("LD_PRELOAD").unwrap_or_default();
        let preload = if others.is_empty() {
            library.display().to_string()
        } else {
            format!("{}:{others}", library.display())
        };
        env.retain(|(k, _)| k != "LD_PRELOAD");
        env.push(("LD_PRELOAD".into(), preload.into()));
    }
    let mut set = |k: &str, v: &str| env.push((k.into(), v.into()));
    for (name, value) in &plan.metadata.params {
        set(&format!("OMPI_MCA_{name}"), value);
    }
    // Parameters given to the restart itself (its -mca or OMPI_MCA_ environment) win
    // over the recorded ones; the tool's own markers never reach the program.
    for (def, value, source) in plan.params.iter() {
        let given = matches!(source, Source::CommandLine | Source::Environment);
        if given && !crate::params::table::PER_RUN.contains(&def.name) {
            set(&format!("OMPI_MCA_{}", def.name), value);
        }
    }
    let prefix = plan.metadata.self_prefix.as_deref().unwrap_or("opal_crs_self_user");
    set("OMPI_MCA_crs", "self");
    set(ENV_DO_RESTART, "1");
    set("OMPI_MCA_crs_self_prefix", prefix);
    if let Some(series) = &plan.series {
        set(ENV_SERIES, &series.to_string_lossy());
    }
    set(ENV_SNAPSHOT_DIR, &plan.dir.to_string_lossy());
    env
}

/// POSIX shell-word splitting without a shell: blanks separate words; single quotes
/// keep everything; double quotes keep all but `\"`, `\\`, `\$`, `` \` ``; a backslash
/// outside quotes escapes the next character.
pub fn split_words(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("backslash at end of line".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("empty command".into());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(split_words("./app -x 3").unwrap(), ["./app", "-x", "3"]);
        assert_eq!(split_words("  a   b\t c ").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_words("prog 'two words' \"and \\\"more\\\"\"").unwrap(),
            ["prog", "two words", "and \"more\""]
        );
        assert_eq!(split_words("a\\ b c''d \"\"").unwrap(), ["a b", "cd", ""]);
        assert_eq!(split_words("say \"\\n\"").unwrap(), ["say", "\\n"]);
    }

    #[test]
    fn rejects_broken_lines() {
        assert!(split_words("").is_err());
        assert!(split_words("   ").is_err());
        assert!(split_words("a 'b").is_err());
        assert!(split_words("a \"b").is_err());
        assert!(split_words("a \\").is_err());
    }
}

//! LD_PRELOAD into a program that never calls `opal_init`: a constructor initialises
//! the runtime before `main` and a destructor finalises it at exit. Nothing here may
//! panic or abort the host: every failure turns C/R off with a warning. Only when this
//! very file is named in LD_PRELOAD does anything happen; a program linked with
//! `-lopalcrs` calls `opal_init` itself.

use crate::runtime;
use std::ffi::{CStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = on_load;

#[used]
#[link_section = ".fini_array"]
static DESTRUCTOR: extern "C" fn() = on_unload;

static INITIALISED_HERE: AtomicBool = AtomicBool::new(false);

/// Our tools link the library's code; a preload inherited by them must stay inert.
const TOOLS: &[&str] = &["opal-checkpoint", "opal-restart", "opal-info", "opal-run"];

extern "C" fn on_load() {
    let _ = std::panic::catch_unwind(|| {
        let Some(ours) = own_path() else { return };
        let preload = std::env::var_os("LD_PRELOAD").unwrap_or_default();
        if !names_us(&preload, &ours) || is_our_tool() {
            return;
        }
        if open_mpi_loaded() {
            warn(
                "Open MPI's libopen-pal is loaded in this process; libopalcrs stays out of its way",
            );
            return;
        }
        // Off the environment while init may run a child (CRIU is probed there); put
        // back afterwards unless opal_cr_preload_children=0, so that whatever a wrapper
        // executes is preloaded too.
        strip_from_preload(&preload, &ours);
        match runtime::init() {
            Ok(()) => {
                INITIALISED_HERE.store(true, Ordering::SeqCst);
                runtime::set_preloaded_from(ours.clone());
                super::vtable::publish_selected();
            }
            Err(e) => warn(&format!("checkpoint/restart disabled: {e}")),
        }
        if runtime::params().is_some_and(|p| p.bool("opal_cr_preload_children")) {
            std::env::set_var("LD_PRELOAD", &preload);
        }
    });
}

extern "C" fn on_unload() {
    if INITIALISED_HERE.swap(false, Ordering::SeqCst) {
        let _ = std::panic::catch_unwind(runtime::finalize);
    }
}

fn warn(message: &str) {
    crate::output::ensure_logger();
    log::warn!(target: "cr", "libopalcrs (LD_PRELOAD): {message}");
}

/// The file this code was loaded from.
fn own_path() -> Option<PathBuf> {
    // SAFETY: dladdr on one of our own functions; dli_fname is NUL-terminated.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(on_load as *const () as *const libc::c_void, &mut info) == 0
            || info.dli_fname.is_null()
        {
            return None;
        }
        Some(PathBuf::from(OsString::from_vec(CStr::from_ptr(info.dli_fname).to_bytes().to_vec())))
    }
}

/// LD_PRELOAD entries are separated by blanks or colons.
fn entries(preload: &OsString) -> impl Iterator<Item = &[u8]> {
    preload.as_bytes().split(|&b| b == b':' || b == b' ' || b == b'\t').filter(|e| !e.is_empty())
}

/// Whether an entry is this file: the same file, or a bare name the loader resolved to it.
fn is_us(entry: &[u8], ours: &Path) -> bool {
    let entry = Path::new(std::ffi::OsStr::from_bytes(entry));
    if entry.components().count() == 1 {
        return ours.file_name() == Some(entry.as_os_str());
    }
    match (entry.canonicalize(), ours.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn names_us(preload: &OsString, ours: &Path) -> bool {
    entries(preload).any(|e| is_us(e, ours))
}

/// LD_PRELOAD without this library (for `opal_cr_preload_children=0`).
fn strip_from_preload(preload: &OsString, ours: &Path) {
    let rest: Vec<&[u8]> = entries(preload).filter(|e| !is_us(e, ours)).collect();
    if rest.is_empty() {
        std::env::remove_var("LD_PRELOAD");
    } else {
        std::env::set_var("LD_PRELOAD", OsString::from_vec(rest.join(&b':')));
    }
}

fn is_our_tool() -> bool {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|exe| exe.file_name().map(|n| TOOLS.iter().any(|t| n == *t)))
        .unwrap_or(false)
}

/// Whether Open MPI's own OPAL library is loaded in this process.
fn open_mpi_loaded() -> bool {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        found: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid info whose name is NUL-terminated or NULL.
        let name = unsafe { (*info).dlpi_name };
        if !name.is_null()
            && unsafe { CStr::from_ptr(name) }.to_bytes().windows(11).any(|w| w == b"libopen-pal")
        {
            // SAFETY: `found` points to the bool below.
            unsafe { *(found as *mut bool) = true };
            return 1;
        }
        0
    }
    let mut found = false;
    // SAFETY: the callback only reads the loader's data and writes our bool.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut found as *mut bool).cast()) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_itself_in_ld_preload() {
        let ours = std::env::current_exe().unwrap();
        let name = ours.file_name().unwrap().to_os_string();
        assert!(names_us(&OsString::from(format!("/x/other.so:{}", ours.display())), &ours));
        assert!(names_us(&name, &ours));
        assert!(!names_us(&OsString::from("/x/other.so libfoo.so"), &ours));
    }

    #[test]
    fn open_mpi_is_not_loaded_in_the_test_binary() {
        assert!(!open_mpi_loaded());
    }
}

//! opal_crs_base_*: framework entry points, metadata helpers, the cleanup list, the
//! checkpoint options and snapshot objects (opaque to C, made by `opalcrs_*_new`) and
//! the self-callback registration.

use crate::codes::*;
use crate::runtime::callbacks::{
    self, opal_crs_base_self_checkpoint_fn_t, opal_crs_base_self_continue_fn_t,
    opal_crs_base_self_restart_fn_t,
};
use crate::runtime::Done;
use parking_lot::Mutex;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::path::PathBuf;

/// Checkpoint options (`term`, `stop`, `inc_prep_only`, `inc_recover_only`).
pub struct opal_crs_base_ckpt_options_t {
    pub(super) term: bool,
    pub(super) stop: bool,
    pub(super) inc_prep_only: bool,
    pub(super) inc_recover_only: bool,
}

/// A snapshot reference: its directory and component.
pub struct opal_crs_base_snapshot_t {
    directory: Option<CString>,
    component: Option<CString>,
}

impl opal_crs_base_snapshot_t {
    pub(super) fn directory(&self) -> Option<PathBuf> {
        self.directory.as_ref().map(|d| PathBuf::from(d.to_string_lossy().into_owned()))
    }

    pub(super) fn set_from(&mut self, done: &Done) {
        self.directory = CString::new(done.path.to_string_lossy().into_owned()).ok();
        self.component = CString::new(done.component).ok();
    }
}

fn strdup(text: &str) -> *mut c_char {
    let Ok(text) = CString::new(text) else { return std::ptr::null_mut() };
    // SAFETY: strdup of a valid C string; the caller frees it with free().
    unsafe { libc::strdup(text.as_ptr()) }
}

/// Opens the framework; our components are built in, so there is nothing to load.
#[no_mangle]
pub extern "C" fn opal_crs_base_open(flags: c_int) -> c_int {
    let _ = flags;
    OPAL_SUCCESS
}

/// Selection happens in `opal_init`; this reports whether a component is selected
/// (or selection is off: C/R disabled or `crs_base_do_not_select`).
#[no_mangle]
pub extern "C" fn opal_crs_base_select() -> c_int {
    ffi_body!("opal_crs_base_select", OPAL_ERROR, {
        let params = crate::runtime::params();
        let selection_off = params
            .as_ref()
            .map_or(true, |p| !p.bool("ft_cr_enabled") || p.bool("crs_base_do_not_select"));
        if selection_off || crate::runtime::selected().is_some() {
            OPAL_SUCCESS
        } else {
            OPAL_ERROR
        }
    })
}

#[no_mangle]
pub extern "C" fn opal_crs_base_close() -> c_int {
    OPAL_SUCCESS
}

/// A malloc'ed name of a state (the caller frees it); "Unknown" for other values.
#[no_mangle]
pub extern "C" fn opal_crs_base_state_str(state: opal_crs_state_type_t) -> *mut c_char {
    ffi_body!("opal_crs_base_state_str", std::ptr::null_mut(), {
        strdup(match state {
            OPAL_CRS_CHECKPOINT => "Checkpoint",
            OPAL_CRS_RESTART => "Restart",
            OPAL_CRS_CONTINUE => "Continue",
            OPAL_CRS_TERM => "Terminate",
            OPAL_CRS_RUNNING => "Running",
            OPAL_CRS_ERROR => "Error",
            _ => "Unknown",
        })
    })
}

/// Reads the whole of a stdio stream, rewinding before and after (as the original).
unsafe fn read_stream(file: *mut libc::FILE) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    libc::rewind(file);
    loop {
        let n = libc::fread(chunk.as_mut_ptr().cast(), 1, chunk.len(), file);
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    libc::rewind(file);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads `# PID: ` and the component token from an open metadata file.
#[no_mangle]
pub unsafe extern "C" fn opal_crs_base_extract_expected_component(
    metadata: *mut libc::FILE,
    component_name: *mut *mut c_char,
    prev_pid: *mut c_int,
) -> c_int {
    ffi_body!("opal_crs_base_extract_expected_component", OPAL_ERROR, {
        if metadata.is_null() || component_name.is_null() || prev_pid.is_null() {
            return OPAL_ERROR;
        }
        // SAFETY: non-NULL stream from the caller.
        let text = unsafe { read_stream(metadata) };
        match crate::snapshot::metadata::extract_expected_component(&text) {
            Ok((component, pid)) => {
                // SAFETY: checked non-NULL output pointers.
                unsafe {
                    *component_name = strdup(&component);
                    *prev_pid = pid;
                }
                OPAL_SUCCESS
            }
            Err(e) => {
                log::error!(target: "crs", "{e}");
                e.code()
            }
        }
    })
}

/// Appends every value of `token` in the metadata file to the NULL-terminated,
/// malloc'ed array `*value` (which starts NULL or is such an array).
#[no_mangle]
pub unsafe extern "C" fn opal_crs_base_metadata_read_token(
    metadata: *mut libc::FILE,
    token: *mut c_char,
    value: *mut *mut *mut c_char,
) -> c_int {
    ffi_body!("opal_crs_base_metadata_read_token", OPAL_ERROR, {
        if metadata.is_null() || token.is_null() || value.is_null() {
            return OPAL_ERROR;
        }
        // SAFETY: non-NULL arguments from the caller; token is NUL-terminated.
        let (text, token) = unsafe {
            (read_stream(metadata), CStr::from_ptr(token).to_string_lossy().into_owned())
        };
        let found = crate::snapshot::metadata::read_token(&text, &token);
        // SAFETY: *value is NULL or a malloc'ed NULL-terminated array of malloc'ed strings.
        unsafe {
            let mut count = 0usize;
            let old = *value;
            if !old.is_null() {
                while !(*old.add(count)).is_null() {
                    count += 1;
                }
            }
            let grown = libc::realloc(
                old.cast(),
                (count + found.len() + 1) * std::mem::size_of::<*mut c_char>(),
            ) as *mut *mut c_char;
            if grown.is_null() {
                return OPAL_ERR_OUT_OF_RESOURCE;
            }
            for (i, item) in found.iter().enumerate() {
                *grown.add(count + i) = strdup(item);
            }
            *grown.add(count + found.len()) = std::ptr::null_mut();
            *value = grown;
        }
        OPAL_SUCCESS
    })
}

struct CleanupList {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

static CLEANUP: Mutex<CleanupList> =
    Mutex::new(CleanupList { files: Vec::new(), dirs: Vec::new() });

/// Remembers a file or directory for `opal_crs_base_cleanup_flush`; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn opal_crs_base_cleanup_append(
    filename: *mut c_char,
    is_dir: bool,
) -> c_int {
    ffi_body!("opal_crs_base_cleanup_append", OPAL_ERROR, {
        if filename.is_null() {
            return OPAL_SUCCESS;
        }
        // SAFETY: NUL-terminated string from the caller.
        let path =
            PathBuf::from(unsafe { CStr::from_ptr(filename) }.to_string_lossy().into_owned());
        let mut list = CLEANUP.lock();
        if is_dir {
            list.dirs.push(path);
        } else {
            list.files.push(path);
        }
        OPAL_SUCCESS
    })
}

/// Removes the remembered files, then the remembered directories (recursively).
#[no_mangle]
pub extern "C" fn opal_crs_base_cleanup_flush() -> c_int {
    ffi_body!("opal_crs_base_cleanup_flush", OPAL_ERROR, {
        let list = std::mem::replace(
            &mut *CLEANUP.lock(),
            CleanupList { files: Vec::new(), dirs: Vec::new() },
        );
        for file in list.files {
            let _ = std::fs::remove_file(file);
        }
        for dir in list.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        OPAL_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn opal_crs_base_copy_options(
    from: *mut opal_crs_base_ckpt_options_t,
    to: *mut opal_crs_base_ckpt_options_t,
) -> c_int {
    ffi_body!("opal_crs_base_copy_options", OPAL_ERROR, {
        if from.is_null() || to.is_null() {
            return OPAL_ERROR;
        }
        // SAFETY: both non-NULL option objects of ours.
        unsafe {
            let from = &*from;
            let to = &mut *to;
            to.term = from.term;
            to.stop = from.stop;
            to.inc_prep_only = from.inc_prep_only;
            to.inc_recover_only = from.inc_recover_only;
        }
        OPAL_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn opal_crs_base_clear_options(
    target: *mut opal_crs_base_ckpt_options_t,
) -> c_int {
    ffi_body!("opal_crs_base_clear_options", OPAL_ERROR, {
        require_non_null!(target, OPAL_ERROR);
        // SAFETY: a non-NULL option object of ours.
        unsafe { *target = EMPTY_OPTIONS };
        OPAL_SUCCESS
    })
}

const EMPTY_OPTIONS: opal_crs_base_ckpt_options_t = opal_crs_base_ckpt_options_t {
    term: false,
    stop: false,
    inc_prep_only: false,
    inc_recover_only: false,
};

/// A new options object, all false; free it with `opalcrs_options_free`.
#[no_mangle]
pub extern "C" fn opalcrs_options_new() -> *mut opal_crs_base_ckpt_options_t {
    Box::into_raw(Box::new(EMPTY_OPTIONS))
}

#[no_mangle]
pub unsafe extern "C" fn opalcrs_options_free(options: *mut opal_crs_base_ckpt_options_t) {
    if !options.is_null() {
        // SAFETY: made by opalcrs_options_new.
        drop(unsafe { Box::from_raw(options) });
    }
}

/// Sets `term`: end the process once its snapshot is published.
#[no_mangle]
pub unsafe extern "C" fn opalcrs_options_set_term(
    options: *mut opal_crs_base_ckpt_options_t,
    term: bool,
) -> c_int {
    require_non_null!(options, OPAL_ERR_BAD_PARAM);
    // SAFETY: a non-NULL option object of ours.
    unsafe { (*options).term = term };
    OPAL_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn opalcrs_options_get_term(
    options: *const opal_crs_base_ckpt_options_t,
) -> bool {
    // SAFETY: NULL or an option object of ours.
    unsafe { options.as_ref() }.is_some_and(|o| o.term)
}

/// A snapshot reference to a snapshot directory (NULL: empty, filled by a checkpoint);
/// free it with `opalcrs_snapshot_free`.
#[no_mangle]
pub unsafe extern "C" fn opalcrs_snapshot_new(
    directory: *const c_char,
) -> *mut opal_crs_base_snapshot_t {
    ffi_body!("opalcrs_snapshot_new", std::ptr::null_mut(), {
        let directory = if directory.is_null() {
            None
        } else {
            // SAFETY: NUL-terminated string from the caller.
            Some(unsafe { CStr::from_ptr(directory) }.to_owned())
        };
        Box::into_raw(Box::new(opal_crs_base_snapshot_t { directory, component: None }))
    })
}

#[no_mangle]
pub unsafe extern "C" fn opalcrs_snapshot_free(snapshot: *mut opal_crs_base_snapshot_t) {
    if !snapshot.is_null() {
        // SAFETY: made by opalcrs_snapshot_new.
        drop(unsafe { Box::from_raw(snapshot) });
    }
}

/// The snapshot's directory (owned by the object), or NULL.
#[no_mangle]
pub unsafe extern "C" fn opalcrs_snapshot_directory(
    snapshot: *const opal_crs_base_snapshot_t,
) -> *const c_char {
    // SAFETY: NULL or a snapshot object of ours.
    unsafe { snapshot.as_ref() }
        .and_then(|s| s.directory.as_ref())
        .map_or(std::ptr::null(), |d| d.as_ptr())
}

/// The component that wrote the snapshot (owned by the object), or NULL.
#[no_mangle]
pub unsafe extern "C" fn opalcrs_snapshot_component(
    snapshot: *const opal_crs_base_snapshot_t,
) -> *const c_char {
    // SAFETY: NULL or a snapshot object of ours.
    unsafe { snapshot.as_ref() }
        .and_then(|s| s.component.as_ref())
        .map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Registers the self checkpoint callback (wins over `<prefix>_checkpoint`); registered
/// after `opal_init`, it makes self the selected component from then on (if `crs`
/// allows it).
#[no_mangle]
pub extern "C" fn opal_crs_base_self_register_checkpoint_callback(
    function: opal_crs_base_self_checkpoint_fn_t,
) -> c_int {
    ffi_body!("opal_crs_base_self_register_checkpoint_callback", OPAL_ERROR, {
        callbacks::write().self_checkpoint = function;
        if function.is_some() {
            crate::runtime::self_became_available();
            super::vtable::publish_selected();
        }
        OPAL_SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn opal_crs_base_self_register_restart_callback(
    function: opal_crs_base_self_restart_fn_t,
) -> c_int {
    callbacks::write().self_restart = function;
    OPAL_SUCCESS
}

#[no_mangle]
pub extern "C" fn opal_crs_base_self_register_continue_callback(
    function: opal_crs_base_self_continue_fn_t,
) -> c_int {
    callbacks::write().self_continue = function;
    OPAL_SUCCESS
}

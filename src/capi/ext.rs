//! Our own additions, prefixed `opalcrs_`.

use crate::codes::*;
use crate::runtime::{self, Outcome};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::ffi::CString;
use std::os::raw::{c_char, c_int};

/// "MAJOR.MINOR.PATCH" of this library; static storage.
#[no_mangle]
pub extern "C" fn opalcrs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static description of an OPAL return code (never NULL).
#[no_mangle]
pub extern "C" fn opalcrs_strerror(code: c_int) -> *const c_char {
    let text: &'static str = match code {
        OPAL_SUCCESS => "Success\0",
        OPAL_ERROR => "Error\0",
        OPAL_ERR_OUT_OF_RESOURCE => "Out of resource\0",
        OPAL_ERR_TEMP_OUT_OF_RESOURCE => "Temporarily out of resource\0",
        OPAL_ERR_RESOURCE_BUSY => "Resource busy\0",
        OPAL_ERR_BAD_PARAM => "Bad parameter\0",
        OPAL_ERR_FATAL => "Fatal\0",
        OPAL_ERR_NOT_IMPLEMENTED => "Not implemented\0",
        OPAL_ERR_NOT_SUPPORTED => "Not supported\0",
        OPAL_ERR_INTERUPTED => "Interrupted\0",
        OPAL_ERR_WOULD_BLOCK => "Would block\0",
        OPAL_ERR_IN_ERRNO => "System error (see errno)\0",
        OPAL_ERR_UNREACH => "Unreachable\0",
        OPAL_ERR_NOT_FOUND => "Not found\0",
        OPAL_EXISTS => "Exists (not ready)\0",
        OPAL_ERR_TIMEOUT => "Timeout\0",
        OPAL_ERR_NOT_AVAILABLE => "Not available\0",
        OPAL_ERR_PERM => "No permission\0",
        OPAL_ERR_VALUE_OUT_OF_BOUNDS => "Value out of bounds\0",
        OPAL_ERR_FILE_READ_FAILURE => "File read failure\0",
        OPAL_ERR_FILE_WRITE_FAILURE => "File write failure\0",
        OPAL_ERR_FILE_OPEN_FAILURE => "File open failure\0",
        OPAL_ERR_NOT_INITIALIZED => "Not initialized\0",
        _ => "Unknown error code\0",
    };
    text.as_ptr().cast()
}

/// Takes a checkpoint of the calling process now, with default options. `*state`
/// (may be NULL) becomes OPAL_CRS_CONTINUE in the process that goes on and
/// OPAL_CRS_RESTART in a restored image (OPAL_CRS_ERROR on failure).
#[no_mangle]
pub extern "C" fn opalcrs_checkpoint(state: *mut c_int) -> c_int {
    ffi_body!("opalcrs_checkpoint", OPAL_ERROR, {
        let (rc, crs_state) =
            match runtime::checkpoint_with(runtime::Request::default_options(runtime::Origin::Api))
            {
                Ok(done) => (
                    OPAL_SUCCESS,
                    if done.outcome == Outcome::Restarted {
                        OPAL_CRS_RESTART
                    } else {
                        OPAL_CRS_CONTINUE
                    },
                ),
                Err(e) => {
                    log::error!(target: "cr", "opalcrs_checkpoint: {e}");
                    (e.code(), OPAL_CRS_ERROR)
                }
            };
        if !state.is_null() {
            // SAFETY: checked non-NULL.
            unsafe { *state = crs_state };
        }
        rc
    })
}

/// Paths handed out by `opalcrs_snapshot_dir`, kept for the life of the process so a
/// returned pointer never dangles (one short string per snapshot).
static HANDED_OUT: Mutex<Option<HashSet<CString>>> = Mutex::new(None);

/// During a checkpoint callback: the snapshot directory being written (published under
/// its final name afterwards); otherwise the last published snapshot, or NULL. The
/// string stays valid for the life of the process.
#[no_mangle]
pub extern "C" fn opalcrs_snapshot_dir() -> *const c_char {
    ffi_body!("opalcrs_snapshot_dir", std::ptr::null(), {
        let Some(dir) = runtime::snapshot_dir() else { return std::ptr::null() };
        let Ok(dir) = CString::new(dir.to_string_lossy().into_owned()) else {
            return std::ptr::null();
        };
        let mut handed_out = HANDED_OUT.lock();
        let set = handed_out.get_or_insert_with(HashSet::new);
        // A CString's heap buffer does not move when the set rehashes.
        set.get(&dir).map(|kept| kept.as_ptr()).unwrap_or_else(|| {
            let ptr = dir.as_ptr();
            set.insert(dir);
            ptr
        })
    })
}

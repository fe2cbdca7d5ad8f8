//! The exported `opal_crs` module vtable, in the original member order. It is filled
//! with the same trampolines whichever component is selected (they dispatch to it) and
//! all NULL while nothing is selected, which is how the original told "not
//! checkpointable".

use super::crs::{opal_crs_base_ckpt_options_t, opal_crs_base_snapshot_t};
use crate::codes::*;
use crate::runtime::{self, critical};
use std::os::raw::{c_char, c_int};

#[repr(C)]
pub struct opal_crs_base_module_t {
    pub crs_init: Option<unsafe extern "C" fn() -> c_int>,
    pub crs_finalize: Option<unsafe extern "C" fn() -> c_int>,
    pub crs_checkpoint: Option<
        unsafe extern "C" fn(
            pid: libc::pid_t,
            snapshot: *mut opal_crs_base_snapshot_t,
            options: *mut opal_crs_base_ckpt_options_t,
            state: *mut opal_crs_state_type_t,
        ) -> c_int,
    >,
    pub crs_restart: Option<
        unsafe extern "C" fn(
            snapshot: *mut opal_crs_base_snapshot_t,
            spawn_child: bool,
            child_pid: *mut libc::pid_t,
        ) -> c_int,
    >,
    pub crs_disable_checkpoint: Option<unsafe extern "C" fn() -> c_int>,
    pub crs_enable_checkpoint: Option<unsafe extern "C" fn() -> c_int>,
    pub crs_prelaunch: Option<
        unsafe extern "C" fn(
            rank: i32,
            base_snapshot_dir: *mut c_char,
            app: *mut *mut c_char,
            cwd: *mut *mut c_char,
            argv: *mut *mut *mut c_char,
            env: *mut *mut *mut c_char,
        ) -> c_int,
    >,
    pub crs_reg_thread: Option<unsafe extern "C" fn() -> c_int>,
}

const EMPTY: opal_crs_base_module_t = opal_crs_base_module_t {
    crs_init: None,
    crs_finalize: None,
    crs_checkpoint: None,
    crs_restart: None,
    crs_disable_checkpoint: None,
    crs_enable_checkpoint: None,
    crs_prelaunch: None,
    crs_reg_thread: None,
};

const SELECTED: opal_crs_base_module_t = opal_crs_base_module_t {
    crs_init: Some(module_init),
    crs_finalize: Some(module_finalize),
    crs_checkpoint: Some(module_checkpoint),
    crs_restart: Some(module_restart),
    crs_disable_checkpoint: Some(module_disable_checkpoint),
    crs_enable_checkpoint: Some(module_enable_checkpoint),
    crs_prelaunch: Some(module_prelaunch),
    crs_reg_thread: Some(module_reg_thread),
};

/// The selected CRS module. This is the library's one `static mut`: C programs read it
/// directly (the original ABI exports the data symbol). Only `publish_selected` writes
/// it, from `opal_init`/`opal_finalize` and a late self registration; a non-PIE
/// program gets a copy relocation, and the dynamic linker binds this library's
/// references to that copy, so both always see the same table.
#[no_mangle]
pub static mut opal_crs: opal_crs_base_module_t = EMPTY;

/// Fills or clears `opal_crs` to match the runtime's selection.
pub(crate) fn publish_selected() {
    let table = if runtime::selected().is_some() { SELECTED } else { EMPTY };
    // SAFETY: written only here, from opal_init/opal_finalize and the self registration
    // functions (which the original also expects from one thread); readers are the
    // program's own code.
    unsafe { std::ptr::addr_of_mut!(opal_crs).write(table) };
}

extern "C" fn module_init() -> c_int {
    OPAL_SUCCESS
}

extern "C" fn module_finalize() -> c_int {
    OPAL_SUCCESS
}

/// Checkpoint of the calling process (pid 0 or its own PID) through the runtime, with
/// all three phases; `*state` becomes CONTINUE, RESTART or ERROR.
unsafe extern "C" fn module_checkpoint(
    pid: libc::pid_t,
    snapshot: *mut opal_crs_base_snapshot_t,
    options: *mut opal_crs_base_ckpt_options_t,
    state: *mut opal_crs_state_type_t,
) -> c_int {
    ffi_body!("opal_crs.crs_checkpoint", OPAL_ERROR, {
        // SAFETY: options, when given, is one of our option objects.
        let term = unsafe { options.as_ref() }.is_some_and(|o| o.term);
        super::cr::checkpoint_self(pid, term, true, snapshot, state)
    })
}

unsafe extern "C" fn module_restart(
    snapshot: *mut opal_crs_base_snapshot_t,
    spawn_child: bool,
    child_pid: *mut libc::pid_t,
) -> c_int {
    ffi_body!("opal_crs.crs_restart", OPAL_ERROR, {
        require_non_null!(snapshot, OPAL_ERR_BAD_PARAM);
        // SAFETY: checked non-NULL; one of our snapshot objects.
        let Some(dir) = (unsafe { &*snapshot }).directory() else { return OPAL_ERR_BAD_PARAM };
        match crate::restart::restart(&crate::restart::Target::path(dir), spawn_child, false) {
            Ok(crate::framework::RestartOutcome::Spawned { pid, .. }) => {
                if !child_pid.is_null() {
                    // SAFETY: checked non-NULL.
                    unsafe { *child_pid = pid };
                }
                OPAL_SUCCESS
            }
            Ok(crate::framework::RestartOutcome::Exited(_)) => OPAL_SUCCESS,
            Ok(crate::framework::RestartOutcome::Rejected(why)) => {
                log::error!(target: "crs", "crs_restart: {why}");
                OPAL_ERROR
            }
            Err(e) => {
                log::error!(target: "crs", "crs_restart: {e}");
                e.code()
            }
        }
    })
}

extern "C" fn module_disable_checkpoint() -> c_int {
    critical::disable_checkpoint();
    OPAL_SUCCESS
}

extern "C" fn module_enable_checkpoint() -> c_int {
    critical::enable_checkpoint();
    OPAL_SUCCESS
}

/// A launcher hook of ORTE's. Children started by a program never inherit our tool
/// markers, so there is nothing to change in their environment.
extern "C" fn module_prelaunch(
    _rank: i32,
    _base_snapshot_dir: *mut c_char,
    _app: *mut *mut c_char,
    _cwd: *mut *mut c_char,
    _argv: *mut *mut *mut c_char,
    _env: *mut *mut *mut c_char,
) -> c_int {
    OPAL_SUCCESS
}

/// Threads need no registration with our components.
extern "C" fn module_reg_thread() -> c_int {
    OPAL_SUCCESS
}

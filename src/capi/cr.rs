//! opal_cr_*: the request dispatcher, notify/coord/INC callback registration, the INC
//! core and the library-entry hooks behind the OPAL_CR_* macros.

use super::crs::opal_crs_base_snapshot_t;
use crate::codes::*;
use crate::runtime::callbacks::{
    self, opal_cr_coord_callback_fn_t, opal_cr_notify_callback_fn_t, opal_cr_user_inc_callback_fn_t,
};
use crate::runtime::{self, critical, Origin, Outcome, Request};
use std::os::raw::c_int;

/// Takes a checkpoint of the calling process through the runtime and reports the
/// state; shared by `opal_crs.crs_checkpoint` and the INC core.
pub(super) fn checkpoint_self(
    pid: libc::pid_t,
    term: bool,
    run_callbacks: bool,
    snapshot: *mut opal_crs_base_snapshot_t,
    state: *mut opal_crs_state_type_t,
) -> c_int {
    if pid != 0 && pid != std::process::id() as libc::pid_t {
        log::error!(target: "crs", "crs_checkpoint: only the calling process can be checkpointed from inside (pid {pid}); use opal-checkpoint");
        return OPAL_ERR_NOT_SUPPORTED;
    }
    let request = Request { term, run_callbacks, ..Request::default_options(Origin::Api) };
    let (rc, crs_state) = match runtime::checkpoint_with(request) {
        Ok(done) => {
            if !snapshot.is_null() {
                // SAFETY: checked non-NULL; one of our snapshot objects.
                unsafe { &mut *snapshot }.set_from(&done);
            }
            let crs_state = match done.outcome {
                Outcome::Restarted => OPAL_CRS_RESTART,
                Outcome::Term => OPAL_CRS_TERM,
                Outcome::Continue => OPAL_CRS_CONTINUE,
            };
            (OPAL_SUCCESS, crs_state)
        }
        Err(e) => {
            log::error!(target: "crs", "checkpoint failed: {e}");
            (e.code(), OPAL_CRS_ERROR)
        }
    };
    if !state.is_null() {
        // SAFETY: checked non-NULL.
        unsafe { *state = crs_state };
    }
    rc
}

/// Serves a pending checkpoint request now (needed with `opal_cr_use_thread=0`).
#[no_mangle]
pub extern "C" fn opal_cr_test_if_checkpoint_ready() {
    ffi_body!("opal_cr_test_if_checkpoint_ready", (), { runtime::test_if_checkpoint_ready() })
}

/// Replaces the notify callback; the previous one is stored in `*prev_func` (may be NULL).
#[no_mangle]
pub extern "C" fn opal_cr_reg_notify_callback(
    new_func: opal_cr_notify_callback_fn_t,
    prev_func: *mut opal_cr_notify_callback_fn_t,
) -> c_int {
    ffi_body!("opal_cr_reg_notify_callback", OPAL_ERROR, {
        let previous = std::mem::replace(&mut callbacks::write().notify, new_func);
        if !prev_func.is_null() {
            // SAFETY: checked non-NULL; points to a function pointer slot.
            unsafe { *prev_func = previous };
        }
        OPAL_SUCCESS
    })
}

/// Replaces the head of the coordination chain; the new function should call the
/// previous one (stored in `*prev_func`, which may be NULL).
#[no_mangle]
pub extern "C" fn opal_cr_reg_coord_callback(
    new_func: opal_cr_coord_callback_fn_t,
    prev_func: *mut opal_cr_coord_callback_fn_t,
) -> c_int {
    ffi_body!("opal_cr_reg_coord_callback", OPAL_ERROR, {
        let previous = std::mem::replace(&mut callbacks::write().coord, new_func);
        if !prev_func.is_null() {
            // SAFETY: checked non-NULL.
            unsafe { *prev_func = previous };
        }
        OPAL_SUCCESS
    })
}

/// OPAL's own coordination step (the end of every chain).
#[no_mangle]
pub extern "C" fn opal_cr_coord(state: c_int) -> c_int {
    runtime::builtin_coord(state)
}

/// Registers the user INC callback of one event; OPAL_ERROR for an event out of range.
#[no_mangle]
pub extern "C" fn opal_cr_user_inc_register_callback(
    event: opal_cr_user_inc_callback_event_t,
    function: opal_cr_user_inc_callback_fn_t,
    prev_function: *mut opal_cr_user_inc_callback_fn_t,
) -> c_int {
    ffi_body!("opal_cr_user_inc_register_callback", OPAL_ERROR, {
        if !(0..OMPI_CR_INC_MAX).contains(&event) {
            return OPAL_ERROR;
        }
        let previous =
            std::mem::replace(&mut callbacks::write().user_inc[event as usize], function);
        if !prev_function.is_null() {
            // SAFETY: checked non-NULL.
            unsafe { *prev_function = previous };
        }
        OPAL_SUCCESS
    })
}

/// The prepare phase alone: INC and coordination callbacks.
#[no_mangle]
pub extern "C" fn opal_cr_inc_core_prep() -> c_int {
    ffi_body!("opal_cr_inc_core_prep", OPAL_ERROR, { runtime::prepare_phase() })
}

/// The component's checkpoint alone (no INC or coordination callbacks).
#[no_mangle]
pub extern "C" fn opal_cr_inc_core_ckpt(
    pid: libc::pid_t,
    snapshot: *mut opal_crs_base_snapshot_t,
    options: *mut super::crs::opal_crs_base_ckpt_options_t,
    state: *mut c_int,
) -> c_int {
    ffi_body!("opal_cr_inc_core_ckpt", OPAL_ERROR, {
        // SAFETY: options, when given, is one of our option objects.
        let term = unsafe { options.as_ref() }.is_some_and(|o| o.term);
        checkpoint_self(pid, term, false, snapshot, state)
    })
}

/// The continue/restart phase alone, for `state` (an OPAL_CRS_* value).
#[no_mangle]
pub extern "C" fn opal_cr_inc_core_recover(state: c_int) -> c_int {
    ffi_body!("opal_cr_inc_core_recover", OPAL_ERROR, {
        runtime::recover_phase(state);
        OPAL_SUCCESS
    })
}

/// All three phases: prepare, checkpoint, continue or restart.
#[no_mangle]
pub extern "C" fn opal_cr_inc_core(
    pid: libc::pid_t,
    snapshot: *mut opal_crs_base_snapshot_t,
    options: *mut super::crs::opal_crs_base_ckpt_options_t,
    state: *mut c_int,
) -> c_int {
    ffi_body!("opal_cr_inc_core", OPAL_ERROR, {
        // SAFETY: options, when given, is one of our option objects.
        let term = unsafe { options.as_ref() }.is_some_and(|o| o.term);
        checkpoint_self(pid, term, true, snapshot, state)
    })
}

/// Reads `NAME=VALUE` lines of `<opal_cr_tmp_dir>/opal_cr_restart-env-<prev_pid>` into
/// the environment and removes the file; no file is not an error.
#[no_mangle]
pub extern "C" fn opal_cr_refresh_environ(prev_pid: c_int) -> c_int {
    ffi_body!("opal_cr_refresh_environ", OPAL_ERROR, {
        to_code!("opal_cr_refresh_environ", runtime::refresh_environ(prev_pid))
    })
}

#[no_mangle]
pub extern "C" fn opal_cr_thread_init_library() {}

#[no_mangle]
pub extern "C" fn opal_cr_thread_finalize_library() {}

#[no_mangle]
pub extern "C" fn opal_cr_thread_abort_library() {}

/// `OPAL_CR_ENTER_LIBRARY`: a checkpoint is deferred until the matching exit.
#[no_mangle]
pub extern "C" fn opal_cr_thread_enter_library() {
    ffi_body!("opal_cr_thread_enter_library", (), {
        if runtime::uses_thread() {
            critical::enter_library();
        } else {
            runtime::test_if_checkpoint_ready();
        }
    })
}

#[no_mangle]
pub extern "C" fn opal_cr_thread_exit_library() {
    ffi_body!("opal_cr_thread_exit_library", (), {
        if runtime::uses_thread() {
            critical::exit_library();
        } else {
            runtime::test_if_checkpoint_ready();
        }
    })
}

#[no_mangle]
pub extern "C" fn opal_cr_thread_noop_progress() {
    ffi_body!("opal_cr_thread_noop_progress", (), {
        if !runtime::uses_thread() {
            runtime::test_if_checkpoint_ready();
        }
    })
}

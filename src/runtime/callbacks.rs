//! The program's callbacks: self-component callbacks it registered, the notify and
//! coordination callbacks (replaceable, chained by the program as in the original) and
//! the user INC callbacks. They are C function pointers by nature: the core calls them
//! but never creates them.
#![allow(non_camel_case_types)]

use crate::codes::*;
use parking_lot::RwLock;
use std::os::raw::{c_char, c_int};

// The original's typedef names; each is nullable (NULL = none).
pub type opal_crs_base_self_checkpoint_fn_t =
    Option<unsafe extern "C" fn(restart_cmd: *mut *mut c_char) -> c_int>;
pub type opal_crs_base_self_continue_fn_t = Option<unsafe extern "C" fn() -> c_int>;
pub type opal_crs_base_self_restart_fn_t = Option<unsafe extern "C" fn() -> c_int>;
pub type opal_cr_notify_callback_fn_t =
    Option<unsafe extern "C" fn(state: opal_cr_ckpt_cmd_state_t) -> c_int>;
pub type opal_cr_coord_callback_fn_t = Option<unsafe extern "C" fn(state: c_int) -> c_int>;
pub type opal_cr_user_inc_callback_fn_t = Option<
    unsafe extern "C" fn(
        event: opal_cr_user_inc_callback_event_t,
        state: opal_cr_user_inc_callback_state_t,
    ) -> c_int,
>;

pub struct Callbacks {
    pub self_checkpoint: opal_crs_base_self_checkpoint_fn_t,
    pub self_continue: opal_crs_base_self_continue_fn_t,
    pub self_restart: opal_crs_base_self_restart_fn_t,
    pub notify: opal_cr_notify_callback_fn_t,
    pub coord: opal_cr_coord_callback_fn_t,
    pub user_inc: [opal_cr_user_inc_callback_fn_t; OMPI_CR_INC_MAX as usize],
}

static CALLBACKS: RwLock<Callbacks> = RwLock::new(Callbacks {
    self_checkpoint: None,
    self_continue: None,
    self_restart: None,
    notify: Some(crate::runtime::builtin_notify),
    coord: Some(crate::runtime::builtin_coord),
    user_inc: [None; OMPI_CR_INC_MAX as usize],
});

pub fn read() -> parking_lot::RwLockReadGuard<'static, Callbacks> {
    CALLBACKS.read()
}

pub fn write() -> parking_lot::RwLockWriteGuard<'static, Callbacks> {
    CALLBACKS.write()
}

/// Calls the user INC callback registered for `event`, if any.
pub fn trigger_user_inc(
    event: opal_cr_user_inc_callback_event_t,
    state: opal_cr_user_inc_callback_state_t,
) -> c_int {
    let callback = read().user_inc.get(event as usize).copied().flatten();
    match callback {
        // SAFETY: the program registered this function with this signature.
        Some(f) => unsafe { f(event, state) },
        None => OPAL_SUCCESS,
    }
}

/// Calls the head of the coordination chain.
pub fn coord(state: c_int) -> c_int {
    let callback = read().coord;
    match callback {
        // SAFETY: registered by the program (or ours) with this signature.
        Some(f) => unsafe { f(state) },
        None => OPAL_SUCCESS,
    }
}

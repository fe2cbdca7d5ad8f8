//! The C boundary: every exported symbol lives in this module tree. Each function
//! converts its arguments, calls the safe core, and maps errors to OPAL codes; panics
//! are caught by `ffi_body!`. `include/opal_crs.h` is generated from these files by a
//! pinned cbindgen.
#![allow(non_camel_case_types)]

#[macro_use]
mod macros;
mod cr;
mod crs;
mod ext;
mod init;
mod namespaces;
mod preload;
mod vtable;

pub use crate::codes::*;
pub use crate::runtime::callbacks::{
    opal_cr_coord_callback_fn_t, opal_cr_notify_callback_fn_t, opal_cr_user_inc_callback_fn_t,
    opal_crs_base_self_checkpoint_fn_t, opal_crs_base_self_continue_fn_t,
    opal_crs_base_self_restart_fn_t,
};
pub use vtable::opal_crs_base_module_t;

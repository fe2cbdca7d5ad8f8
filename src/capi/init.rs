//! opal_init / opal_finalize and their utility and C/R halves.

use super::vtable;
use crate::codes::*;
use crate::runtime;
use std::os::raw::{c_char, c_int};

/// Initialises OPAL: parameters, component selection, the C/R runtime. Reference
/// counted; `pargc` and `pargv` may be NULL (the program's arguments are not parsed).
#[no_mangle]
pub extern "C" fn opal_init(pargc: *mut c_int, pargv: *mut *mut *mut c_char) -> c_int {
    let _ = (pargc, pargv);
    ffi_body!("opal_init", OPAL_ERROR, {
        let rc = to_code!("opal_init", runtime::init());
        vtable::publish_selected();
        rc
    })
}

/// Ends OPAL when the last `opal_init` is matched; OPAL_ERROR if not initialised.
#[no_mangle]
pub extern "C" fn opal_finalize() -> c_int {
    ffi_body!("opal_finalize", OPAL_ERROR, {
        let rc = to_code!("opal_finalize", runtime::finalize());
        vtable::publish_selected();
        rc
    })
}

/// The utility half of `opal_init`: parameters and output only, no C/R.
#[no_mangle]
pub extern "C" fn opal_init_util(pargc: *mut c_int, pargv: *mut *mut *mut c_char) -> c_int {
    let _ = (pargc, pargv);
    ffi_body!("opal_init_util", OPAL_ERROR, { to_code!("opal_init_util", runtime::init_util()) })
}

#[no_mangle]
pub extern "C" fn opal_finalize_util() -> c_int {
    ffi_body!("opal_finalize_util", OPAL_ERROR, {
        to_code!("opal_finalize_util", runtime::finalize_util())
    })
}

/// The C/R half of `opal_init` (reference counted together with it).
#[no_mangle]
pub extern "C" fn opal_cr_init() -> c_int {
    opal_init(std::ptr::null_mut(), std::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn opal_cr_finalize() -> c_int {
    opal_finalize()
}

/// Turns C/R off (or back on) for the next `opal_init`, on top of `ft_cr_enabled`.
#[no_mangle]
pub extern "C" fn opal_cr_set_enabled(en: bool) -> c_int {
    ffi_body!("opal_cr_set_enabled", OPAL_ERROR, {
        runtime::set_enabled(en);
        OPAL_SUCCESS
    })
}

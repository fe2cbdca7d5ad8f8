//! The one wrapper every exported function goes through: a panic never crosses the C
//! boundary; it is logged and turned into the function's error value.

macro_rules! ffi_body {
    ($name:literal, $on_panic:expr, $body:block) => {{
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => {
                log::error!(target: "capi", "{}: internal error (panic caught at the C boundary)", $name);
                $on_panic
            }
        }
    }};
}

/// Rejects a NULL pointer argument with the given return value.
macro_rules! require_non_null {
    ($ptr:expr, $ret:expr) => {
        if $ptr.is_null() {
            return $ret;
        }
    };
}

/// Maps a core result to an OPAL code, logging the message of an error.
macro_rules! to_code {
    ($name:literal, $result:expr) => {
        match $result {
            Ok(()) => $crate::codes::OPAL_SUCCESS,
            Err(e) => {
                $crate::output::ensure_logger();
                log::error!(target: "capi", "{}: {}", $name, e);
                e.code()
            }
        }
    };
}

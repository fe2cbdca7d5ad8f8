//! OPAL return codes and enum values, with the numbers of the original
//! `opal/include/opal/constants.h`, `crs.h` and `opal_cr.h`.
//!
//! These are plain `c_int` constants rather than Rust enums: a C caller may pass any
//! integer, and an out-of-range value in a Rust enum would be undefined behaviour.
#![allow(non_camel_case_types)]

use std::os::raw::c_int;

pub const OPAL_SUCCESS: c_int = 0;
pub const OPAL_ERROR: c_int = -1;
pub const OPAL_ERR_OUT_OF_RESOURCE: c_int = -2;
pub const OPAL_ERR_TEMP_OUT_OF_RESOURCE: c_int = -3;
pub const OPAL_ERR_RESOURCE_BUSY: c_int = -4;
pub const OPAL_ERR_BAD_PARAM: c_int = -5;
pub const OPAL_ERR_FATAL: c_int = -6;
pub const OPAL_ERR_NOT_IMPLEMENTED: c_int = -7;
pub const OPAL_ERR_NOT_SUPPORTED: c_int = -8;
pub const OPAL_ERR_INTERUPTED: c_int = -9;
pub const OPAL_ERR_WOULD_BLOCK: c_int = -10;
pub const OPAL_ERR_IN_ERRNO: c_int = -11;
pub const OPAL_ERR_UNREACH: c_int = -12;
pub const OPAL_ERR_NOT_FOUND: c_int = -13;
pub const OPAL_EXISTS: c_int = -14;
pub const OPAL_ERR_TIMEOUT: c_int = -15;
pub const OPAL_ERR_NOT_AVAILABLE: c_int = -16;
pub const OPAL_ERR_PERM: c_int = -17;
pub const OPAL_ERR_VALUE_OUT_OF_BOUNDS: c_int = -18;
pub const OPAL_ERR_FILE_READ_FAILURE: c_int = -19;
pub const OPAL_ERR_FILE_WRITE_FAILURE: c_int = -20;
pub const OPAL_ERR_FILE_OPEN_FAILURE: c_int = -21;
pub const OPAL_ERR_NOT_INITIALIZED: c_int = -44;

/// `opal_crs_state_type_t`
pub type opal_crs_state_type_t = c_int;
pub const OPAL_CRS_NONE: opal_crs_state_type_t = 0;
pub const OPAL_CRS_CHECKPOINT: opal_crs_state_type_t = 1;
pub const OPAL_CRS_RESTART_PRE: opal_crs_state_type_t = 2;
pub const OPAL_CRS_RESTART: opal_crs_state_type_t = 3;
pub const OPAL_CRS_CONTINUE: opal_crs_state_type_t = 4;
pub const OPAL_CRS_TERM: opal_crs_state_type_t = 5;
pub const OPAL_CRS_RUNNING: opal_crs_state_type_t = 6;
pub const OPAL_CRS_ERROR: opal_crs_state_type_t = 7;
pub const OPAL_CRS_STATE_MAX: opal_crs_state_type_t = 8;

/// `opal_cr_ckpt_cmd_state_t`
pub type opal_cr_ckpt_cmd_state_t = c_int;
pub const OPAL_CHECKPOINT_CMD_START: opal_cr_ckpt_cmd_state_t = 0;
pub const OPAL_CHECKPOINT_CMD_IN_PROGRESS: opal_cr_ckpt_cmd_state_t = 1;
pub const OPAL_CHECKPOINT_CMD_NULL: opal_cr_ckpt_cmd_state_t = 2;
pub const OPAL_CHECKPOINT_CMD_ERROR: opal_cr_ckpt_cmd_state_t = 3;
pub const OPAL_CR_STATUS_NONE: opal_cr_ckpt_cmd_state_t = 4;
pub const OPAL_CR_STATUS_REQUESTED: opal_cr_ckpt_cmd_state_t = 5;
pub const OPAL_CR_STATUS_RUNNING: opal_cr_ckpt_cmd_state_t = 6;
pub const OPAL_CR_STATUS_TERM: opal_cr_ckpt_cmd_state_t = 7;
pub const OPAL_CR_STATUS_CONTINUE: opal_cr_ckpt_cmd_state_t = 8;
pub const OPAL_CR_STATUS_RESTART_PRE: opal_cr_ckpt_cmd_state_t = 9;
pub const OPAL_CR_STATUS_RESTART_POST: opal_cr_ckpt_cmd_state_t = 10;

/// `opal_cr_user_inc_callback_event_t` (1.10 spelling `OMPI_CR_INC_*`; the later
/// `OPAL_CR_INC_*` spelling is provided by the compatibility header).
pub type opal_cr_user_inc_callback_event_t = c_int;
pub const OMPI_CR_INC_PRE_CRS_PRE_MPI: opal_cr_user_inc_callback_event_t = 0;
pub const OMPI_CR_INC_PRE_CRS_POST_MPI: opal_cr_user_inc_callback_event_t = 1;
pub const OMPI_CR_INC_CRS_PRE_CKPT: opal_cr_user_inc_callback_event_t = 2;
pub const OMPI_CR_INC_CRS_POST_CKPT: opal_cr_user_inc_callback_event_t = 3;
pub const OMPI_CR_INC_POST_CRS_PRE_MPI: opal_cr_user_inc_callback_event_t = 4;
pub const OMPI_CR_INC_POST_CRS_POST_MPI: opal_cr_user_inc_callback_event_t = 5;
pub const OMPI_CR_INC_MAX: opal_cr_user_inc_callback_event_t = 6;

/// `opal_cr_user_inc_callback_state_t`
pub type opal_cr_user_inc_callback_state_t = c_int;
pub const OMPI_CR_INC_STATE_PREPARE: opal_cr_user_inc_callback_state_t = 0;
pub const OMPI_CR_INC_STATE_CONTINUE: opal_cr_user_inc_callback_state_t = 1;
pub const OMPI_CR_INC_STATE_RESTART: opal_cr_user_inc_callback_state_t = 2;
pub const OMPI_CR_INC_STATE_ERROR: opal_cr_user_inc_callback_state_t = 3;

/// Messages of the original `opal_cr.h` byte commands.
pub const OPAL_CR_DONE: c_int = 0;
pub const OPAL_CR_ACK: c_int = 1;
pub const OPAL_CR_CHECKPOINT: c_int = 2;

/// The constant's name of an OPAL return code, e.g. `OPAL_ERROR` for -1.
pub fn code_name(code: c_int) -> Option<&'static str> {
    Some(match code {
        OPAL_SUCCESS => "OPAL_SUCCESS",
        OPAL_ERROR => "OPAL_ERROR",
        OPAL_ERR_OUT_OF_RESOURCE => "OPAL_ERR_OUT_OF_RESOURCE",
        OPAL_ERR_TEMP_OUT_OF_RESOURCE => "OPAL_ERR_TEMP_OUT_OF_RESOURCE",
        OPAL_ERR_RESOURCE_BUSY => "OPAL_ERR_RESOURCE_BUSY",
        OPAL_ERR_BAD_PARAM => "OPAL_ERR_BAD_PARAM",
        OPAL_ERR_FATAL => "OPAL_ERR_FATAL",
        OPAL_ERR_NOT_IMPLEMENTED => "OPAL_ERR_NOT_IMPLEMENTED",
        OPAL_ERR_NOT_SUPPORTED => "OPAL_ERR_NOT_SUPPORTED",
        OPAL_ERR_INTERUPTED => "OPAL_ERR_INTERUPTED",
        OPAL_ERR_WOULD_BLOCK => "OPAL_ERR_WOULD_BLOCK",
        OPAL_ERR_IN_ERRNO => "OPAL_ERR_IN_ERRNO",
        OPAL_ERR_UNREACH => "OPAL_ERR_UNREACH",
        OPAL_ERR_NOT_FOUND => "OPAL_ERR_NOT_FOUND",
        OPAL_EXISTS => "OPAL_EXISTS",
        OPAL_ERR_TIMEOUT => "OPAL_ERR_TIMEOUT",
        OPAL_ERR_NOT_AVAILABLE => "OPAL_ERR_NOT_AVAILABLE",
        OPAL_ERR_PERM => "OPAL_ERR_PERM",
        OPAL_ERR_VALUE_OUT_OF_BOUNDS => "OPAL_ERR_VALUE_OUT_OF_BOUNDS",
        OPAL_ERR_FILE_READ_FAILURE => "OPAL_ERR_FILE_READ_FAILURE",
        OPAL_ERR_FILE_WRITE_FAILURE => "OPAL_ERR_FILE_WRITE_FAILURE",
        OPAL_ERR_FILE_OPEN_FAILURE => "OPAL_ERR_FILE_OPEN_FAILURE",
        OPAL_ERR_NOT_INITIALIZED => "OPAL_ERR_NOT_INITIALIZED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_constant_names() {
        assert_eq!(code_name(OPAL_ERROR), Some("OPAL_ERROR"));
        assert_eq!(code_name(OPAL_ERR_NOT_INITIALIZED), Some("OPAL_ERR_NOT_INITIALIZED"));
        assert_eq!(code_name(1), None);
    }
}

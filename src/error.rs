//! The one error type of the core: an OPAL return code plus a message that names the
//! cause. The C boundary turns it into the code (and logs the message); the tools print
//! the message.

use crate::codes;
use std::fmt;
use std::os::raw::c_int;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: c_int,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: c_int, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
    /// OPAL_ERROR with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(codes::OPAL_ERROR, message)
    }
    /// An I/O failure, with what was being done (`context`) in front of the OS error.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        let code = match err.kind() {
            std::io::ErrorKind::NotFound => codes::OPAL_ERR_NOT_FOUND,
            std::io::ErrorKind::PermissionDenied => codes::OPAL_ERR_PERM,
            _ => codes::OPAL_ERROR,
        };
        Self::new(code, format!("{context}: {err}"))
    }
    pub fn code(&self) -> c_int {
        self.code
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Puts more context in front of the message, keeping the code.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error { code: self.code, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The calling thread's errno.
pub(crate) fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

//! Errors: the library's status and the message it left for this thread.
use core::ffi::CStr;
use std::fmt;

use crate::sys;

/// Why a call failed: the non-OK values of `nq_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    InvalidArgument,
    Unsupported,
    OutOfMemory,
    BufferTooSmall,
    Corrupt,
    Truncated,
    Version,
    BackendUnavailable,
    Device,
    OutOfRange,
    Internal,
    /// A status this crate does not know (a newer library).
    Unknown(i32),
}

impl Status {
    /// The status of a raw code; `None` for `NQ_OK`.
    pub fn from_raw(raw: sys::nq_status) -> Option<Status> {
        Some(match raw {
            sys::NQ_OK => return None,
            sys::NQ_ERR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::NQ_ERR_UNSUPPORTED => Status::Unsupported,
            sys::NQ_ERR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::NQ_ERR_BUFFER_TOO_SMALL => Status::BufferTooSmall,
            sys::NQ_ERR_CORRUPT => Status::Corrupt,
            sys::NQ_ERR_TRUNCATED => Status::Truncated,
            sys::NQ_ERR_VERSION => Status::Version,
            sys::NQ_ERR_BACKEND_UNAVAILABLE => Status::BackendUnavailable,
            sys::NQ_ERR_DEVICE => Status::Device,
            sys::NQ_ERR_OUT_OF_RANGE => Status::OutOfRange,
            sys::NQ_ERR_INTERNAL => Status::Internal,
            other => Status::Unknown(other),
        })
    }

    /// The raw `nq_status` code.
    pub fn raw(self) -> sys::nq_status {
        match self {
            Status::InvalidArgument => sys::NQ_ERR_INVALID_ARGUMENT,
            Status::Unsupported => sys::NQ_ERR_UNSUPPORTED,
            Status::OutOfMemory => sys::NQ_ERR_OUT_OF_MEMORY,
            Status::BufferTooSmall => sys::NQ_ERR_BUFFER_TOO_SMALL,
            Status::Corrupt => sys::NQ_ERR_CORRUPT,
            Status::Truncated => sys::NQ_ERR_TRUNCATED,
            Status::Version => sys::NQ_ERR_VERSION,
            Status::BackendUnavailable => sys::NQ_ERR_BACKEND_UNAVAILABLE,
            Status::Device => sys::NQ_ERR_DEVICE,
            Status::OutOfRange => sys::NQ_ERR_OUT_OF_RANGE,
            Status::Internal => sys::NQ_ERR_INTERNAL,
            Status::Unknown(raw) => raw,
        }
    }

    /// The library's name of the status, e.g. `"NQ_ERR_CORRUPT"`.
    pub fn name(self) -> &'static str {
        // SAFETY: nq_status_string returns a static, NUL-terminated string for any value.
        let full = unsafe { CStr::from_ptr(sys::nq_status_string(self.raw())) };
        let full = full.to_str().unwrap_or("NQ_ERR_UNKNOWN");
        full.split(':').next().unwrap_or(full)
    }
}

/// A failed call: its status and the library's message naming the argument or field
/// at fault. Errors detected by this crate before calling the library (a slice too short
/// for its shape, say) carry `Status::InvalidArgument` and a message of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

impl Error {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    /// The error of a failed call, with this thread's `nq_last_error()`. Must be called
    /// right after the call, on the same thread.
    pub(crate) fn last(raw: sys::nq_status) -> Error {
        // SAFETY: nq_last_error never returns NULL; the string is valid until the next
        // call on this thread, and is copied here.
        let message = unsafe { CStr::from_ptr(sys::nq_last_error()) }.to_string_lossy().into_owned();
        Error { status: Status::from_raw(raw).unwrap_or(Status::Internal), message }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(Status::InvalidArgument, message)
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `Ok(())` for `NQ_OK`, else the error with this thread's message.
pub(crate) fn check(raw: sys::nq_status) -> Result<()> {
    if raw == sys::NQ_OK {
        Ok(())
    } else {
        Err(Error::last(raw))
    }
}

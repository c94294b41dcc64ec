//! Configuration: the six sources of SPEC §2, parsed (never executed) into a typed [`VmConfig`].
//!
//! (Being written: see issue 2.)

/// A configuration error: names the file, line and key, and says what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
}

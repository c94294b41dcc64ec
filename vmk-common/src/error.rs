//! Error kinds that decide a tool's exit status (see [`crate::cli`]).

/// A mistake in how the tool was called: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A helper to return a usage error: `return Err(usage!("…"))`.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        ::anyhow::Error::new($crate::error::UsageError(format!($($arg)*)))
    };
}

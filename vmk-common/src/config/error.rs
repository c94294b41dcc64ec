//! The error of every config stage, and where a value came from: one type, so that every
//! message names file, line and key the same way and tools exit 2 on all of them.

use std::fmt;

use serde::Serialize;

/// A configuration error: names the file, line and key, and says what was expected.
///
/// Displayed as `vm-config:7: VMK_MEM: expected a memory size like 2048, 2G or 512M, got "lots"`;
/// parts that are unknown are left out. Tools exit with status 2 on it (see [`crate::cli`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the value came from: a file as named to the user, `environment` or `command line`.
    pub file: Option<String>,
    /// Line in `file`, from 1.
    pub line: Option<usize>,
    /// The key concerned.
    pub key: Option<String>,
    /// What is wrong and, where there is something to do, what to do.
    pub message: String,
}

impl ConfigError {
    /// An error with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// An error about a whole file.
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: Some(file.into()),
            ..ConfigError::new(message)
        }
    }

    /// An error at a line of a file.
    pub fn at(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        ConfigError {
            line: Some(line),
            ..ConfigError::file(file, message)
        }
    }

    /// The same error, about `key`.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same error, located where `origin` says the value came from.
    pub fn with_origin(mut self, origin: &Origin) -> Self {
        match origin {
            Origin::File { path, line } => {
                self.file = Some(path.clone());
                self.line = Some(*line);
            }
            Origin::Env => self.file = Some("environment".into()),
            Origin::CommandLine => self.file = Some("command line".into()),
            Origin::Default => {}
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The file as named (escaped: a path may hold anything) and the key as a short
        // excerpt (a key name read from a hostile file may be a megabyte long).
        if let Some(file) = &self.file {
            write!(f, "{}:", crate::text::escaped_line(file))?;
            if let Some(line) = self.line {
                write!(f, "{line}:")?;
            }
            f.write_str(" ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{}: ", crate::text::excerpt(key))?;
        }
        f.write_str(&self.message)
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The key table's default.
    Default,
    /// A line of a config file (`path` as shown to the user).
    File {
        /// The file as named in messages.
        path: String,
        /// Line, from 1.
        line: usize,
    },
    /// A `VMK_*` environment variable.
    Env,
    /// An override from the command line.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line } => write!(f, "{path}:{line}"),
            Origin::Env => f.write_str("environment"),
            Origin::CommandLine => f.write_str("command line"),
        }
    }
}

//! The node's error type.

/// What can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file cannot be read or makes no sense.
    #[error("configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A certificate or key cannot be read, generated or used.
    #[error("tls: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// The database file cannot be opened, read or written.
    #[error("storage: {reason}")]
    Storage {
        /// What is wrong.
        reason: String,
    },
    /// Something the demo expected did not happen.
    #[error("demo: {reason}")]
    Demo {
        /// What was expected, and what happened.
        reason: String,
    },
    /// The engine refused something (a corrupt record on disk, say).
    #[error(transparent)]
    Engine(#[from] concord::Error),
    /// An operating-system call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The node's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn storage(e: impl std::fmt::Display) -> Error {
        Error::Storage {
            reason: e.to_string(),
        }
    }

    pub(crate) fn tls(e: impl std::fmt::Display) -> Error {
        Error::Tls {
            reason: e.to_string(),
        }
    }
}

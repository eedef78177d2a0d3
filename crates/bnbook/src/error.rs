//! The crate-wide error type.
//!
//! Layers and functions that take user input (shapes, hyper-parameters, files)
//! return [`Result`] instead of panicking. Each message says what was wrong and,
//! where there is one, how to fix it.

use std::fmt;

/// Everything that can go wrong in `bnbook`, with a message meant for a person.
#[derive(Debug)]
pub enum Error {
    /// A tensor had the wrong shape for a layer or function.
    Shape {
        /// Which layer or function complained, e.g. `"Linear(256 -> 120)"`.
        context: String,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// A hyper-parameter or argument is out of range (e.g. a zero kernel size).
    InvalidArgument(String),
    /// Loading Fashion-MNIST failed; see [`crate::data::DataError`].
    Data(crate::data::DataError),
    /// Writing an output file or directory failed.
    Io {
        /// What was being done, e.g. `"cannot write book/generated/speed.md"`.
        what: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

impl Error {
    /// Builds an [`Error::Shape`] from a context and a message.
    pub fn shape(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape {
            context: context.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { context, message } => write!(f, "{context}: {message}"),
            // The message names the argument and says what is wrong with it.
            Error::InvalidArgument(message) => write!(f, "{message}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Data(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Data(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<crate::data::DataError> for Error {
    fn from(e: crate::data::DataError) -> Self {
        Error::Data(e)
    }
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of an expected error; panics (failing the test) on `Ok`.
#[cfg(test)]
pub(crate) fn refusal(result: Result<()>) -> String {
    match result {
        Ok(()) => panic!("bad settings were accepted"),
        Err(e) => e.to_string(),
    }
}

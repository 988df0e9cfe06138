//! OpenVPN option handling: the config-file lexer, client and server config models, and
//! PUSH_REPLY parsing.
//!
//! Config parsing here is pure: text in, a model out. Files named by the config (certificates,
//! keys, credentials) stay paths until the I/O shell reads them; relative paths are resolved
//! against the config file's directory (or `cd DIR`).

pub mod client;
mod common;
pub mod lexer;
pub mod push;
pub mod server;

use std::fmt;
use std::path::{Path, PathBuf};

pub use lexer::{Directive, parse_directives};

/// A config error, located at `file:line` (line 0 when it concerns the file as a whole).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// 1-based line, 0 for whole-file errors (e.g. a missing option).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// A harmless option that was ignored, located like [`ConfigError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// 1-based line.
    pub line: usize,
    /// What was ignored and why.
    pub message: String,
}

/// Key or certificate material: inline text or a file to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// From an inline `<tag>` block.
    Inline(String),
    /// From a file (already resolved against the config directory).
    File(PathBuf),
}

impl Source {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Inline(_) => "[inline]".to_owned(),
            Source::File(p) => p.display().to_string(),
        }
    }
}

/// Shared state while interpreting directives: location info and relative-path base.
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub base: PathBuf,
    pub warnings: Vec<ConfigWarning>,
}

impl Ctx<'_> {
    pub fn error(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        }
    }

    pub fn warn(&mut self, line: usize, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            line,
            message: message.into(),
        });
    }

    /// Material for options like `ca`: inline block or a path.
    pub fn source(&self, d: &Directive) -> Result<Source, ConfigError> {
        if let Some(text) = &d.inline {
            return Ok(Source::Inline(text.clone()));
        }
        let p = d.arg(0).ok_or_else(|| {
            self.error(d.line, format!("option '{}' needs a file argument", d.name))
        })?;
        Ok(Source::File(self.path(p)))
    }

    pub fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    pub fn num<T: std::str::FromStr>(&self, d: &Directive, i: usize) -> Result<T, ConfigError> {
        let s = d.arg(i).ok_or_else(|| {
            self.error(
                d.line,
                format!("option '{}' is missing argument {}", d.name, i + 1),
            )
        })?;
        s.parse().map_err(|_| {
            self.error(
                d.line,
                format!("option '{}': '{}' is not a valid number", d.name, s),
            )
        })
    }

    pub fn arg<'d>(&self, d: &'d Directive, i: usize) -> Result<&'d str, ConfigError> {
        d.arg(i).ok_or_else(|| {
            self.error(
                d.line,
                format!("option '{}' is missing argument {}", d.name, i + 1),
            )
        })
    }
}

//! OpenVPN option handling: the config-file lexer, client and server config models, and
//! PUSH_REPLY parsing.
//!
//! Config parsing here is pure: text in, a model out. Files named by the config (certificates,
//! keys, credentials) stay paths until the I/O shell reads them; relative paths are resolved
//! against the config file's directory (or `cd DIR`).

pub mod client;
pub mod common;
pub mod compress;
pub mod lexer;
pub mod push;
pub mod server;

use std::fmt;
use std::path::{Path, PathBuf};

pub use lexer::{Directive, parse_directives};

/// Config text from the bytes of a file, in any encoding users have: UTF-8 (with or without a
/// byte-order mark), else Latin-1 (every byte is a character, as OpenVPN itself reads files:
/// byte by byte). CRLF and a missing final newline are handled by the lexer.
pub fn decode_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Directives from one origin: a config file, or the command line (`--name args…`, as stock
/// openvpn takes every option). Several are applied in order, later ones on top.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// Name in messages: the file, or `command line`.
    pub name: String,
    /// Directory relative paths resolve against.
    pub base: PathBuf,
    /// The directives (their `line` is the file line, or the argument's position).
    pub directives: Vec<Directive>,
}

impl ConfigSource {
    /// A config file's text.
    pub fn from_text(text: &str, file: &Path) -> Result<ConfigSource, ConfigError> {
        let name = file.display().to_string();
        let directives = parse_directives(text).map_err(|e| ConfigError {
            file: name.clone(),
            line: e.line,
            message: e.error.to_string(),
        })?;
        Ok(ConfigSource {
            name,
            base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            directives,
        })
    }

    /// Command-line options: each `--name` starts a directive, the words up to the next
    /// `--name` are its arguments (OpenVPN's rule). `line` is the argument's position.
    /// `--config FILE` is not expanded here: split the arguments at it (the shell reads files).
    pub fn from_args(args: &[String], cwd: &Path) -> Result<ConfigSource, ConfigError> {
        let name = "command line".to_owned();
        let mut directives: Vec<Directive> = vec![];
        for (i, a) in args.iter().enumerate() {
            match a.strip_prefix("--") {
                Some(opt) if !opt.is_empty() => directives.push(Directive {
                    name: opt.to_owned(),
                    args: vec![],
                    line: i + 1,
                    inline: None,
                }),
                _ => match directives.last_mut() {
                    Some(d) => d.args.push(a.clone()),
                    None => {
                        return Err(ConfigError {
                            file: name,
                            line: i + 1,
                            message: format!("'{a}' is not an option (options start with --)"),
                        });
                    }
                },
            }
        }
        Ok(ConfigSource {
            name,
            base: cwd.to_owned(),
            directives,
        })
    }
}

/// Applies every directive of `sources` in order with `apply(ctx, directive, optional)`
/// (`setenv opt X` unwrapped to an optional X), and returns the context `finish` reports
/// whole-file errors with (named after the first source) and the warnings so far.
pub(crate) fn apply_sources<'s>(
    sources: &'s [ConfigSource],
    mut apply: impl FnMut(&mut Ctx<'_>, &Directive, bool) -> Result<(), ConfigError>,
) -> Result<Ctx<'s>, ConfigError> {
    let mut warnings = vec![];
    for src in sources {
        let mut ctx = Ctx {
            file: &src.name,
            base: src.base.clone(),
            warnings: std::mem::take(&mut warnings),
        };
        for d in &src.directives {
            match setenv_opt(d) {
                Some(inner) => apply(&mut ctx, &inner, true)?,
                None => apply(&mut ctx, d, false)?,
            }
        }
        warnings = ctx.warnings;
    }
    Ok(Ctx {
        file: sources.first().map_or("command line", |s| s.name.as_str()),
        base: sources.first().map(|s| s.base.clone()).unwrap_or_default(),
        warnings,
    })
}

/// Which side a config file describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `client`, or `tls-client` + `pull`.
    Client,
    /// `server`, `server-bridge`, `mode server`, or `tls-server` without `client`.
    Server,
}

impl Role {
    /// Guesses the role from the directives, as OpenVPN's options decide it.
    pub fn detect(directives: &[Directive]) -> Role {
        let has = |n: &str| directives.iter().any(|d| d.name == n);
        let server = has("server")
            || has("server-bridge")
            || directives
                .iter()
                .any(|d| d.name == "mode" && d.arg(0) == Some("server"))
            || (has("tls-server") && !has("client") && !has("pull"));
        if server { Role::Server } else { Role::Client }
    }
}

/// Options OpenVPN removed or deprecated, read the way their authors meant when that is safe.
/// Returns true when `d` was one of them (handled, with a warning), an error when the old
/// meaning cannot be kept safely.
pub(crate) fn legacy_option(ctx: &mut Ctx<'_>, d: &Directive) -> Result<bool, ConfigError> {
    let line = d.line;
    match d.name.as_str() {
        "keysize" => ctx.warn(
            line,
            "option 'keysize' ignored: removed in OpenVPN 2.6; the key size follows the cipher (e.g. AES-256-CBC)",
        ),
        "key-method" => {
            if ctx.arg(d, 0)? != "2" {
                return Err(ctx.error(
                    line,
                    "option 'key-method': only key-method 2 exists since OpenVPN 2.5; remove the line",
                ));
            }
            ctx.warn(line, "option 'key-method 2' ignored: it is the only method (removed in 2.6)");
        }
        "tun-ipv6" => ctx.warn(
            line,
            "option 'tun-ipv6' ignored: IPv6 in the tunnel is always on (deprecated since 2.4)",
        ),
        "ifconfig-nowarn" => ctx.warn(line, "option 'ifconfig-nowarn' ignored: OCC warnings are not printed"),
        "scramble" | "xor-secret" => {
            return Err(ctx.error(
                line,
                format!("option '{}' is an obfuscation patch (Tunnelblick/'xor'), not OpenVPN's protocol: no stock server or client speaks it; remove the line", d.name),
            ));
        }
        "secret" => {
            return Err(ctx.error(
                line,
                "option 'secret': static-key mode is left out by design (deprecated in 2.6, removed in OpenVPN 2.7; no forward secrecy): use TLS with 'client'/'server' and tls-crypt",
            ));
        }
        "ifconfig" | "ifconfig-ipv6" => {
            return Err(ctx.error(
                line,
                format!("option '{}': point-to-point mode (fixed ifconfig without client/server) is left out by design: use 'client' with a 'server' that pushes addresses", d.name),
            ));
        }
        "plugin" => {
            return Err(ctx.error(
                line,
                "option 'plugin': OpenVPN C plugins cannot be loaded by tunscope (left out by design): use auth-user-pass-verify / up / down scripts",
            ));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// An option neither parser knows. `setenv opt X` wraps options that may be unknown (OpenVPN
/// ignores them then), `ignore-unknown-option` lists names to skip; everything else is an
/// error naming `file:line` — with a hint when the line is the tail of a hard-wrapped line.
pub(crate) fn unknown_option(
    ctx: &mut Ctx<'_>,
    d: &Directive,
    ignored: &[(&str, &str)],
    ignore_unknown: &[String],
    optional: bool,
) -> Result<(), ConfigError> {
    let name = d.name.as_str();
    if let Some((_, why)) = ignored.iter().find(|(n, _)| *n == name) {
        ctx.warn(d.line, format!("option '{name}' ignored: {why}"));
    } else if optional {
        ctx.warn(d.line, format!("option '{name}' ignored (setenv opt)"));
    } else if ignore_unknown.iter().any(|n| n == name) {
        ctx.warn(
            d.line,
            format!("option '{name}' ignored (ignore-unknown-option)"),
        );
    } else if name.contains(':')
        || name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(ctx.error(
            d.line,
            format!("'{name}' is not an option: is this the rest of the line above, wrapped by an editor? Join the two lines"),
        ));
    } else {
        return Err(ctx.error(d.line, format!("unsupported option '{name}'")));
    }
    Ok(())
}

/// The option wrapped by `setenv opt NAME ARGS…` (OpenVPN: "ignore NAME if unknown").
pub(crate) fn setenv_opt(d: &Directive) -> Option<Directive> {
    if d.name != "setenv" || d.arg(0) != Some("opt") {
        return None;
    }
    let name = d.arg(1)?.to_owned();
    Some(Directive {
        name,
        args: d.args.get(2..).unwrap_or_default().to_vec(),
        line: d.line,
        inline: None,
    })
}

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

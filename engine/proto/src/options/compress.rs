//! Compression options with OpenVPN 2.6's meaning: `comp-lzo [yes|no|adaptive]`,
//! `compress [stub|stub-v2|lzo|lz4|lz4-v2]`, `comp-noadapt`, `allow-compression no|asym|yes`.
//!
//! 2.6's rules, kept here: without `allow-compression`, a compression option enables
//! *receiving* compressed packets only ("Compression for receiving enabled"); `yes` also
//! compresses what we send; `no` allows only the stubs (framing without compression) and makes
//! `comp-lzo`/`compress ALG` an error. The framing on the wire follows the algorithm either
//! way, so a peer that compresses is understood.

use crate::data::Framing;
use crate::options::{ConfigError, Ctx, Directive};

/// `allow-compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AllowCompression {
    /// Stubs only (explicit `no`).
    No,
    /// Decompress what arrives, never compress (explicit `asym`, and 2.6's behaviour when the
    /// option is absent).
    #[default]
    Asym,
    /// Compress and decompress.
    Yes,
}

/// The effective compression settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompressOptions {
    /// Framing on the wire (and which compressed packets are accepted).
    pub framing: Framing,
    /// `allow-compression`.
    pub allow: AllowCompression,
    /// `comp-lzo` without argument / `adaptive`: OpenVPN stops compressing incompressible
    /// flows for a while (only matters when sending compressed).
    pub adaptive: bool,
}

impl CompressOptions {
    /// Whether packets we send are compressed.
    pub fn compress_tx(&self) -> bool {
        self.allow == AllowCompression::Yes && self.framing.is_compression()
    }

    /// One line for `check-config --explain`.
    pub fn describe(&self) -> String {
        let alg = self.framing.name();
        match (self.framing.is_compression(), self.allow) {
            (false, _) => alg.to_owned(),
            (true, AllowCompression::Yes) => {
                format!("{alg}: compress sent packets, decompress received ones")
            }
            (true, _) => format!(
                "{alg} framing: received packets are decompressed, sent ones are not compressed (allow-compression yes to compress)"
            ),
        }
    }
}

/// Collects the compression directives of a config.
#[derive(Debug, Default)]
pub(crate) struct CompressBuilder {
    framing: Option<(usize, Framing)>,
    allow: Option<AllowCompression>,
    adaptive: bool,
}

impl CompressBuilder {
    /// Applies `d` when it is a compression option.
    pub(crate) fn apply(&mut self, ctx: &mut Ctx<'_>, d: &Directive) -> Result<bool, ConfigError> {
        let line = d.line;
        match d.name.as_str() {
            "comp-lzo" => {
                let (framing, adaptive) = parse_comp_lzo(d.arg(0))
                    .map_err(|e| ctx.error(line, format!("option 'comp-lzo': {e}")))?;
                self.framing = Some((line, framing));
                self.adaptive = adaptive;
            }
            "compress" => {
                let framing = parse_compress(d.arg(0))
                    .map_err(|e| ctx.error(line, format!("option 'compress': {e}")))?;
                self.framing = Some((line, framing));
            }
            "comp-noadapt" => self.adaptive = false,
            "allow-compression" => {
                self.allow = Some(match d.arg(0).unwrap_or("asym") {
                    "no" => AllowCompression::No,
                    "asym" => AllowCompression::Asym,
                    "yes" => AllowCompression::Yes,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!(
                                "option 'allow-compression': unknown value '{o}' (no, asym or yes)"
                            ),
                        ));
                    }
                })
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The effective settings; `allow-compression no` with real compression is an error, as
    /// in 2.6.
    pub(crate) fn finish(&self, ctx: &mut Ctx<'_>) -> Result<CompressOptions, ConfigError> {
        let framing = self.framing.map_or(Framing::None, |(_, f)| f);
        let allow = self.allow.unwrap_or_default();
        if let Some((line, f)) = self.framing
            && f.is_compression()
        {
            match allow {
                    AllowCompression::No => {
                        return Err(ctx.error(
                            line,
                            format!("'{}' conflicts with 'allow-compression no' (use 'comp-lzo no' or 'compress stub-v2' for framing only)", f.name()),
                        ));
                    }
                    AllowCompression::Asym => ctx.warn(
                        line,
                        "compression for receiving enabled: sent packets are not compressed unless 'allow-compression yes' is set (as OpenVPN 2.6)",
                    ),
                    AllowCompression::Yes => ctx.warn(
                        line,
                        "compression for sending and receiving enabled: compression has been used to break encryption (VORACLE)",
                    ),
                }
        }
        Ok(CompressOptions {
            framing,
            allow,
            adaptive: self.adaptive,
        })
    }
}

/// `comp-lzo [yes|no|adaptive]` → framing and adaptivity.
pub fn parse_comp_lzo(arg: Option<&str>) -> Result<(Framing, bool), String> {
    Ok(match arg {
        None | Some("adaptive") => (Framing::Lzo, true),
        Some("yes") => (Framing::Lzo, false),
        Some("no") => (Framing::LzoStub, false),
        Some(o) => return Err(format!("'{o}' must be yes, no or adaptive")),
    })
}

/// `compress [ALG]` → framing.
pub fn parse_compress(arg: Option<&str>) -> Result<Framing, String> {
    Ok(match arg {
        None | Some("stub") => Framing::StubSwap,
        Some("stub-v2") => Framing::StubV2,
        Some("lzo") => Framing::Lzo,
        Some("lz4") => Framing::Lz4,
        Some("lz4-v2") => Framing::Lz4V2,
        Some("migrate") => Framing::None,
        Some(o) => {
            return Err(format!(
                "unknown algorithm '{o}' (stub, stub-v2, lzo, lz4, lz4-v2)"
            ));
        }
    })
}

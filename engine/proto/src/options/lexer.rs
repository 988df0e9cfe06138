//! Splits OpenVPN config text into directives, following OpenVPN's `parse_line` rules.
//!
//! * One directive per line; a leading `--` on the option name is accepted.
//! * Tokens are separated by whitespace. `"double quotes"` group a token and allow backslash
//!   escapes; `'single quotes'` group literally; a backslash outside quotes escapes the next
//!   character.
//! * `#` or `;` between tokens starts a comment.
//! * `<name>` on its own line starts an inline block that ends at `</name>`; its text becomes
//!   the single argument of directive `name` (e.g. `<ca>…</ca>` = `ca [[inline]]`).

use std::fmt;

/// One directive with its arguments and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// Option name without leading `--`.
    pub name: String,
    /// Arguments.
    pub args: Vec<String>,
    /// 1-based line number of the directive (the opening tag for inline blocks).
    pub line: usize,
    /// Text of an inline block (`<name>…</name>`), if this directive is one.
    pub inline: Option<String>,
}

impl Directive {
    /// Argument `i`, if present.
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }
}

/// A lexical error at a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    /// A quote without its closing partner.
    #[error("unterminated quote")]
    UnterminatedQuote,
    /// An inline block without its end tag.
    #[error("inline block <{0}> is not closed with </{0}>")]
    UnclosedInline(String),
    /// A stray closing tag.
    #[error("unexpected </{0}> without opening tag")]
    StrayClosingTag(String),
    /// Characters that make the line unusable (NUL, control bytes).
    #[error("line contains a control character")]
    ControlCharacter,
}

/// A lexical error with its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexErrorAt {
    /// 1-based line.
    pub line: usize,
    /// What went wrong.
    pub error: LexError,
}

impl fmt::Display for LexErrorAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// Splits a single line into tokens. `Ok(vec![])` for blank and comment lines.
pub fn split_line(line: &str) -> Result<Vec<String>, LexError> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_control() && c != '\t' && c != '\r' && c != '\n' {
            return Err(LexError::ControlCharacter);
        }
        match c {
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err(LexError::UnterminatedQuote),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err(LexError::UnterminatedQuote),
                        },
                        Some(o) => cur.push(o),
                    }
                }
            }
            '\'' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err(LexError::UnterminatedQuote),
                        Some('\'') => break,
                        Some(o) => cur.push(o),
                    }
                }
            }
            '\\' => {
                in_token = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            '#' | ';' if !in_token => break,
            c if c.is_whitespace() => {
                if in_token {
                    tokens.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    if in_token {
        tokens.push(cur);
    }
    Ok(tokens)
}

/// Splits a whole config text into directives.
pub fn parse_directives(text: &str) -> Result<Vec<Directive>, LexErrorAt> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((idx, raw)) = lines.next() {
        let line_no = idx + 1;
        let trimmed = raw.trim();
        if let Some(tag) = inline_open_tag(trimmed) {
            let close = format!("</{tag}>");
            let mut body = String::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                if l.trim() == close {
                    closed = true;
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if !closed {
                return Err(LexErrorAt {
                    line: line_no,
                    error: LexError::UnclosedInline(tag.to_owned()),
                });
            }
            out.push(Directive {
                name: tag.to_owned(),
                args: vec!["[[inline]]".to_owned()],
                line: line_no,
                inline: Some(body),
            });
            continue;
        }
        if let Some(tag) = trimmed.strip_prefix("</").and_then(|t| t.strip_suffix('>')) {
            return Err(LexErrorAt {
                line: line_no,
                error: LexError::StrayClosingTag(tag.to_owned()),
            });
        }
        let mut tokens = split_line(raw).map_err(|error| LexErrorAt {
            line: line_no,
            error,
        })?;
        if tokens.is_empty() {
            continue;
        }
        let name = tokens.remove(0);
        let name = name.strip_prefix("--").unwrap_or(&name).to_owned();
        out.push(Directive {
            name,
            args: tokens,
            line: line_no,
            inline: None,
        });
    }
    Ok(out)
}

fn inline_open_tag(line: &str) -> Option<&str> {
    let tag = line.strip_prefix('<')?.strip_suffix('>')?;
    if tag.is_empty() || tag.starts_with('/') {
        return None;
    }
    tag.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        .then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_comments() {
        assert_eq!(
            split_line("remote vpn.example 1194 udp # main").unwrap(),
            vec!["remote", "vpn.example", "1194", "udp"]
        );
        assert_eq!(
            split_line(r#"push "route 10.0.0.0 255.0.0.0""#).unwrap(),
            vec!["push", "route 10.0.0.0 255.0.0.0"]
        );
        assert_eq!(
            split_line(r#"x "a \"b\"" 'c \d' e\ f"#).unwrap(),
            vec!["x", r#"a "b""#, r"c \d", "e f"]
        );
        assert_eq!(split_line("  ; comment").unwrap(), Vec::<String>::new());
        assert_eq!(split_line("a#b").unwrap(), vec!["a#b"]);
        assert_eq!(split_line("x \"open"), Err(LexError::UnterminatedQuote));
        assert_eq!(split_line("x \u{1}"), Err(LexError::ControlCharacter));
    }

    #[test]
    fn directives_with_inline_blocks_and_lines() {
        let text = "client\n\n--dev tun\n<ca>\n-----BEGIN CERTIFICATE-----\nAAA\n</ca>\nverb 3\n";
        let d = parse_directives(text).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[1].name, "dev");
        assert_eq!(d[1].line, 3);
        assert_eq!(d[2].name, "ca");
        assert_eq!(d[2].line, 4);
        assert_eq!(
            d[2].inline.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nAAA\n")
        );
        assert_eq!(d[3].line, 8);
    }

    #[test]
    fn unclosed_and_stray_tags() {
        assert_eq!(
            parse_directives("a\n<key>\nxx\n").unwrap_err(),
            LexErrorAt {
                line: 2,
                error: LexError::UnclosedInline("key".into())
            }
        );
        assert_eq!(parse_directives("</key>").unwrap_err().line, 1);
    }
}

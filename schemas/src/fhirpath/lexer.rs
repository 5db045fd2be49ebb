//! Tokens of a FHIRPath expression.

use super::FhirPathError;

/// One token with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub kind: Tok,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// A plain identifier (may also be a keyword operator such as `and`, depending on position).
    Ident(String),
    /// A `` `backtick` `` delimited identifier: never a keyword.
    Delimited(String),
    Str(String),
    /// Number text, e.g. `12`, `1.50`.
    Number(String),
    /// `@...` literal text after the `@`.
    Temporal(String),
    /// `%name`, `` %`name` `` or `%'name'`.
    External(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    Punct(&'static str),
    End,
}

const PUNCT: [&str; 20] =
    ["<=", ">=", "!=", "!~", "(", ")", "[", "]", "{", "}", ".", ",", "+", "-", "*", "/", "&", "|", "<", ">"];

pub(super) fn tokenize(src: &str) -> Result<Vec<Token>, FhirPathError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let err = |offset: usize, msg: &str| FhirPathError::Syntax { offset, message: msg.to_string() };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let Some(end) = src[i + 2..].find("*/") else {
                return Err(err(i, "unterminated /* comment"));
            };
            i += end + 4;
            continue;
        }
        let start = i;
        let kind = if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Tok::Ident(src[start..i].to_string())
        } else if c == b'`' {
            let (s, next) = quoted(src, i, b'`')?;
            i = next;
            Tok::Delimited(s)
        } else if c == b'\'' {
            let (s, next) = quoted(src, i, b'\'')?;
            i = next;
            Tok::Str(s)
        } else if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = src[start..i].to_string();
            if i < b.len() && b[i] == b'L' && !b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
                i += 1; // long literal: kept as an integer
            }
            Tok::Number(text)
        } else if c == b'@' {
            i += 1;
            while let Some(&ch) = b.get(i) {
                let next_digit = b.get(i + 1).is_some_and(u8::is_ascii_digit);
                let take = match ch {
                    b'0'..=b'9' | b':' | b'T' | b'Z' => true,
                    b'-' | b'+' => next_digit,
                    b'.' => next_digit && src[start..i].contains(':'),
                    _ => false,
                };
                if !take {
                    break;
                }
                i += 1;
            }
            Tok::Temporal(src[start + 1..i].to_string())
        } else if c == b'%' {
            i += 1;
            match b.get(i) {
                Some(b'`') => {
                    let (s, next) = quoted(src, i, b'`')?;
                    i = next;
                    Tok::External(s)
                }
                Some(b'\'') => {
                    let (s, next) = quoted(src, i, b'\'')?;
                    i = next;
                    Tok::External(s)
                }
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    let s = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    Tok::External(src[s..i].to_string())
                }
                _ => return Err(err(start, "'%' must be followed by a variable name")),
            }
        } else if c == b'$' {
            i += 1;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            Tok::Special(src[start + 1..i].to_string())
        } else if c == b'=' {
            i += 1;
            Tok::Punct("=")
        } else if c == b'~' {
            i += 1;
            Tok::Punct("~")
        } else {
            let Some(p) = PUNCT.iter().find(|p| src[i..].starts_with(**p)) else {
                return Err(err(i, &format!("unexpected character '{}'", src[i..].chars().next().unwrap_or('?'))));
            };
            i += p.len();
            Tok::Punct(p)
        };
        out.push(Token { kind, offset: start });
    }
    out.push(Token { kind: Tok::End, offset: src.len() });
    Ok(out)
}

/// Reads a quoted string or delimited identifier starting at `start` (the quote), with
/// FHIRPath escapes; returns the text and the offset after the closing quote.
fn quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), FhirPathError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((j, c)) = chars.next() {
        if c as u32 == quote as u32 {
            return Ok((out, start + 1 + j + 1));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else { break };
        match e {
            't' => out.push('\t'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                let cp = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).ok_or_else(|| {
                    FhirPathError::Syntax { offset: start + 1 + j, message: format!("invalid escape \\u{hex}") }
                })?;
                out.push(cp);
            }
            other => out.push(other),
        }
    }
    Err(FhirPathError::Syntax { offset: start, message: "unterminated quoted text".into() })
}

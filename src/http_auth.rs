//! Bearer-token authentication, shared by the node's API and the license server: one
//! token-file reader, one header parser, one comparison that takes the same time
//! whatever the token's content (so a client cannot learn a key byte by byte).

use std::path::Path;

use anyhow::{bail, Context};
use axum::http::{header, HeaderMap};

use crate::fsutil;

/// The shortest admin token accepted (node and license server alike).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Read a secrets file: one token per line, `#` comments and blank lines ignored.
pub fn read_tokens(path: &Path, what: &'static str) -> anyhow::Result<Vec<String>> {
    let bytes = fsutil::read_limited(path, 1 << 20, what)?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        bail!("{} holds no {what}", path.display());
    }
    Ok(tokens)
}

/// The admin token of a token file (its first token), at least
/// [`MIN_ADMIN_TOKEN_CHARS`] characters long.
pub fn read_admin_token(path: &Path) -> anyhow::Result<String> {
    let token = read_tokens(path, "admin token")?.remove(0);
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        bail!(
            "the token in {} is shorter than {MIN_ADMIN_TOKEN_CHARS} characters; use a long random one (openssl rand -hex 32)",
            path.display()
        );
    }
    Ok(token)
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Compare a presented token with the expected one in time independent of their
/// content (only the length shows).
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Does `given` match any of `tokens`? Every token is compared, whatever matches.
pub fn any_token_matches(given: &str, tokens: &[String]) -> bool {
    tokens
        .iter()
        .fold(false, |found, t| token_matches(given, t) | found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let keys = vec!["alpha-key".to_string(), "beta-key-2".to_string()];
        assert!(any_token_matches("beta-key-2", &keys));
        assert!(!any_token_matches("beta-key-3", &keys));
        assert!(!any_token_matches("beta-key", &keys));
        assert!(!any_token_matches("", &keys));
    }
}

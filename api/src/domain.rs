//! Domain values that can only be built valid ("parse, don't validate").

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{NaiveDateTime, SubsecRound, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The text of a message: trimmed, not empty, at most the configured number of Unicode
/// scalar values, and free of control characters other than tab and line breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str, max_chars: u32, field: &str) -> Result<Self, ApiError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(ApiError::invalid(field, "must not be empty"));
        }
        let chars = text.chars().count();
        if chars > max_chars as usize {
            return Err(ApiError::invalid(
                field,
                format!("must be at most {max_chars} characters long (it has {chars})"),
            ));
        }
        if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            return Err(ApiError::invalid(
                field,
                "must not contain control characters other than tab and line breaks",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A position in the newest-first list: the id below which the next page starts.
/// Opaque to clients so that its encoding can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(i64);

const CURSOR_PREFIX: &str = "v1:";

impl Cursor {
    pub fn after(id: i64) -> Self {
        Self(id)
    }

    pub fn before_id(self) -> i64 {
        self.0
    }

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{}", self.0))
    }

    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|s| s.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
            .filter(|id| *id > 0)
            .map(Self)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "cursor is malformed: pass the next_cursor of a previous page unchanged".into(),
                )
            })
    }
}

/// A message id taken from a path: a positive integer.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id must be a positive integer, got {raw:?}")))
}

/// The secret that lets its holder edit or delete one message. Only its hash is stored.
pub struct EditToken([u8; 32]);

impl EditToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn hash(&self) -> Vec<u8> {
        hash_token(&self.encode())
    }

    /// Encrypts the token under a key derived from an Idempotency-Key, so that a replay can
    /// hand it out again while the database never holds it in the clear.
    pub fn seal(&self, key: &IdempotencyKey) -> Vec<u8> {
        xor(&self.0, &key.token_pad())
    }

    pub fn unseal(sealed: &[u8], key: &IdempotencyKey) -> Option<Self> {
        let bytes: [u8; 32] = xor(sealed, &key.token_pad()).try_into().ok()?;
        Some(Self(bytes))
    }
}

/// SHA-256 of a presented bearer token, the form in which tokens are stored and compared.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Constant-time comparison of two token hashes.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A client's `Idempotency-Key`: 1–255 visible ASCII characters.
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        let valid =
            (1..=Self::MAX_LEN).contains(&raw.len()) && raw.iter().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    /// The lookup key stored in the database.
    pub fn lookup_hash(&self) -> Vec<u8> {
        self.derive(b"messages-api idempotency key")
    }

    fn token_pad(&self) -> Vec<u8> {
        self.derive(b"messages-api edit token pad")
    }

    fn derive(&self, purpose: &[u8]) -> Vec<u8> {
        Sha256::new().chain_update(purpose).chain_update(self.0.as_bytes()).finalize().to_vec()
    }
}

/// Fingerprint of a create request, to tell a replay from a reuse of the key.
pub fn request_hash(text: &MessageText) -> Vec<u8> {
    Sha256::digest(text.as_str().as_bytes()).to_vec()
}

/// The current UTC time at the microsecond precision both databases store.
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_trimmed_and_counted_in_scalar_values() {
        let text = MessageText::parse("  e\u{301}🙂  ", 3, "message").unwrap();
        assert_eq!(text.as_str(), "e\u{301}🙂");
        assert!(MessageText::parse("abcd", 3, "message").is_err());
    }

    #[test]
    fn message_text_rejects_blank_and_nul() {
        assert!(MessageText::parse(" \n\t ", 10, "message").is_err());
        assert!(MessageText::parse("a\0b", 10, "message").is_err());
        assert!(MessageText::parse("line\r\nbreak\tand tab", 100, "message").is_ok());
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor::after(42);
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in
            ["", "42", "!!!", &URL_SAFE_NO_PAD.encode("v1:-3"), &URL_SAFE_NO_PAD.encode("v2:3")]
        {
            assert!(Cursor::decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sealed_edit_token_opens_only_with_its_key() {
        let token = EditToken::generate();
        let key = IdempotencyKey::parse(b"key-1").unwrap();
        let sealed = token.seal(&key);
        assert_ne!(sealed, token.0.to_vec());
        assert_eq!(EditToken::unseal(&sealed, &key).unwrap().encode(), token.encode());
        let other = IdempotencyKey::parse(b"key-2").unwrap();
        assert_ne!(EditToken::unseal(&sealed, &other).unwrap().encode(), token.encode());
    }

    #[test]
    fn idempotency_key_must_be_visible_ascii() {
        assert!(IdempotencyKey::parse(b"abc-123_XYZ").is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"has space").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
    }
}

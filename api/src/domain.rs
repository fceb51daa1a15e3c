//! Domain values that can only be built valid ("parse, don't validate"). They know no HTTP:
//! failures are `TextError` and `DomainError`, which the routes turn into problem documents.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{NaiveDateTime, SubsecRound, Utc};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a text is not a valid message; the caller knows which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters long (it has {chars})")]
    TooLong { max: u32, chars: usize },
    #[error("must not contain control characters other than tab and line breaks")]
    ControlCharacters,
}

/// Malformed request values and unusable stored ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("cursor is malformed: pass the next_cursor of a previous page unchanged")]
    MalformedCursor,
    #[error("limit must be between 1 and {max}, got {0}", max = PageSize::MAX)]
    PageSizeOutOfRange(u32),
    #[error("id must be a positive integer, got \"{0}\"")]
    NotAPositiveId(i64),
    #[error(
        "Idempotency-Key must be a random UUID, or {min} to {max} random characters from \
         A-Z, a-z, 0-9, '-' and '_' (128 bits or more from a secure random source): {0}",
        min = IdempotencyKey::MIN_LEN,
        max = IdempotencyKey::MAX_LEN
    )]
    GuessableIdempotencyKey(KeyFlaw),
    #[error("TOKEN_SEALING_KEY must be at least {min} characters long", min = TokenSealer::MIN_SECRET_LEN)]
    WeakSealingSecret,
    /// The stored token does not open: another server secret, or the row was altered.
    #[error("the sealed edit token does not open with this server secret and Idempotency-Key")]
    SealBroken,
}

/// The text of a message: trimmed, not empty, at most the configured number of Unicode
/// scalar values, and free of control characters other than tab and line breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str, max_chars: u32) -> Result<Self, TextError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(TextError::Empty);
        }
        let chars = text.chars().count();
        if chars > max_chars as usize {
            return Err(TextError::TooLong { max: max_chars, chars });
        }
        if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            return Err(TextError::ControlCharacters);
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
/// The longest cursor: "v1:" and 19 digits encode to 30 characters. Anything longer is
/// refused before it is decoded.
const CURSOR_MAX_LEN: usize = 30;

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

    pub fn decode(raw: &str) -> Result<Self, DomainError> {
        if raw.len() > CURSOR_MAX_LEN {
            return Err(DomainError::MalformedCursor);
        }
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|s| s.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
            .filter(|id| *id > 0)
            .map(Self)
            .ok_or(DomainError::MalformedCursor)
    }
}

/// How many messages a page holds: 1 to `MAX`, `DEFAULT` when the client does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub const DEFAULT: u32 = 20;
    pub const MAX: u32 = 100;

    pub fn parse(limit: Option<u32>) -> Result<Self, DomainError> {
        match limit.unwrap_or(Self::DEFAULT) {
            limit @ 1..=Self::MAX => Ok(Self(limit)),
            limit => Err(DomainError::PageSizeOutOfRange(limit)),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A message id: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId(i64);

impl MessageId {
    pub fn parse(id: i64) -> Result<Self, DomainError> {
        if id > 0 { Ok(Self(id)) } else { Err(DomainError::NotAPositiveId(id)) }
    }

    pub fn get(self) -> i64 {
        self.0
    }
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
}

/// SHA-256 of a presented bearer token, the form in which tokens are stored and compared.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Constant-time comparison of two token hashes.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Seals edit tokens kept for idempotent replay with ChaCha20-Poly1305, under a key derived
/// (HKDF-SHA256) from the server's secret and the client's Idempotency-Key, and bound to the
/// message (its id is associated data). Reading the database alone gives nothing to
/// brute-force, a changed byte makes the open fail, and so does a seal moved to another
/// message.
pub struct TokenSealer(Hkdf<Sha256>);

/// Sealed form: version, nonce, then the ciphertext with its tag. Version 2 binds the
/// message id; version 1, bound to nothing but its version byte, is still opened, so that a
/// retry across the upgrade gets its token: such rows are gone 24 hours after the deploy
/// (`IDEMPOTENCY_TTL`), when reading them can go.
const SEAL_VERSION: u8 = 2;
const SEAL_VERSION_UNBOUND: u8 = 1;
const NONCE_LEN: usize = 12;
/// The pre-sealing form: the token XOR-ed with SHA-256 of the client's key.
const LEGACY_LEN: usize = 32;

impl TokenSealer {
    pub const MIN_SECRET_LEN: usize = 32;

    pub fn new(secret: &[u8]) -> Result<Self, DomainError> {
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(DomainError::WeakSealingSecret);
        }
        Ok(Self(Hkdf::new(Some(b"messages-api edit token sealing"), secret)))
    }

    pub fn seal(&self, token: &EditToken, key: &IdempotencyKey, message_id: i64) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(SEAL_VERSION, message_id);
        let sealed = self
            .cipher(key)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &token.0, aad: &aad })
            .expect("a 32-byte message always seals");
        [&[SEAL_VERSION][..], &nonce, &sealed].concat()
    }

    /// Whether a stored value predates sealing: erased by the upgrade (empty), or in the
    /// old 32-byte XOR form, written by a previous version still running during a deploy.
    pub fn is_unsealed(sealed: &[u8]) -> bool {
        sealed.is_empty() || sealed.len() == LEGACY_LEN
    }

    pub fn open(
        &self,
        sealed: &[u8],
        key: &IdempotencyKey,
        message_id: i64,
    ) -> Result<EditToken, DomainError> {
        let (&version, rest) = sealed.split_first().ok_or(DomainError::SealBroken)?;
        let aad = match version {
            SEAL_VERSION => associated_data(SEAL_VERSION, message_id),
            SEAL_VERSION_UNBOUND => vec![SEAL_VERSION_UNBOUND],
            _ => return Err(DomainError::SealBroken),
        };
        if rest.len() < NONCE_LEN {
            return Err(DomainError::SealBroken);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let token = self
            .cipher(key)
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| DomainError::SealBroken)?;
        Ok(EditToken(token.try_into().map_err(|_| DomainError::SealBroken)?))
    }

    fn cipher(&self, key: &IdempotencyKey) -> ChaCha20Poly1305 {
        let mut derived = Key::default();
        self.0
            .expand_multi_info(&[b"edit token v1 ", key.0.as_bytes()], &mut derived)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ChaCha20Poly1305::new(&derived)
    }
}

/// The version byte, then the message id (8 bytes, big-endian).
fn associated_data(version: u8, message_id: i64) -> Vec<u8> {
    [&[version][..], &message_id.to_be_bytes()].concat()
}

/// Why an Idempotency-Key could be guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFlaw {
    #[error("this one is {0} characters long")]
    Length(usize),
    #[error("this one has characters other than those")]
    Alphabet,
    #[error("this one has only {0} different characters, so it is not random")]
    Repetitive(usize),
}

/// A client's `Idempotency-Key`, unguessable: a replay hands the message's edit token to
/// whoever sends the key again. 32 characters are 128 bits drawn as hex, 192 as base64url;
/// a UUID (36 characters) fits the same rule, and a random one (version 4) has 122 random
/// bits. Randomness cannot be proven from one key; the distinct-character floor refuses
/// what is plainly made by hand (the nil UUID, one character repeated), and refuses 32
/// random hex digits with a chance of about 3 in 10^13.
#[derive(Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MIN_LEN: usize = 32;
    pub const MAX_LEN: usize = 255;
    const MIN_DISTINCT: usize = 6;

    /// Checks the bytes before copying them: a refused key costs no allocation.
    pub fn parse(raw: &[u8]) -> Result<Self, DomainError> {
        let flaw = |flaw| Err(DomainError::GuessableIdempotencyKey(flaw));
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&raw.len()) {
            return flaw(KeyFlaw::Length(raw.len()));
        }
        if !raw.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
            return flaw(KeyFlaw::Alphabet);
        }
        let mut seen = [false; 128];
        raw.iter().for_each(|&b| seen[usize::from(b)] = true);
        let distinct = seen.iter().filter(|&&seen| seen).count();
        if distinct < Self::MIN_DISTINCT {
            return flaw(KeyFlaw::Repetitive(distinct));
        }
        Ok(Self(raw.iter().map(|&b| char::from(b)).collect()))
    }

    /// The lookup key stored in the database.
    pub fn lookup_hash(&self) -> Vec<u8> {
        Sha256::new()
            .chain_update(b"messages-api idempotency key")
            .chain_update(self.0.as_bytes())
            .finalize()
            .to_vec()
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

    const SECRET: &[u8] = b"a server secret of at least 32 bytes";

    fn client_key(n: u8) -> IdempotencyKey {
        IdempotencyKey::parse(format!("0b7e2a3c-5d41-4f6a-9c2e-8a1b3c4d5e6{n}").as_bytes()).unwrap()
    }

    #[test]
    fn message_text_is_trimmed_and_counted_in_scalar_values() {
        let text = MessageText::parse("  e\u{301}🙂  ", 3).unwrap();
        assert_eq!(text.as_str(), "e\u{301}🙂");
        assert_eq!(MessageText::parse("abcd", 3), Err(TextError::TooLong { max: 3, chars: 4 }));
    }

    #[test]
    fn message_text_rejects_blank_and_nul() {
        assert_eq!(MessageText::parse(" \n\t ", 10), Err(TextError::Empty));
        assert_eq!(MessageText::parse("a\0b", 10), Err(TextError::ControlCharacters));
        assert!(MessageText::parse("line\r\nbreak\tand tab", 100).is_ok());
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor::after(42);
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in
            ["", "42", "!!!", &URL_SAFE_NO_PAD.encode("v1:-3"), &URL_SAFE_NO_PAD.encode("v2:3")]
        {
            assert_eq!(Cursor::decode(bad), Err(DomainError::MalformedCursor), "{bad:?}");
        }
    }

    #[test]
    fn message_ids_are_positive() {
        assert_eq!(MessageId::parse(7).unwrap().get(), 7);
        assert_eq!(MessageId::parse(0), Err(DomainError::NotAPositiveId(0)));
        assert_eq!(MessageId::parse(-1), Err(DomainError::NotAPositiveId(-1)));
    }

    #[test]
    fn sealed_edit_token_opens_only_with_its_key_and_secret() {
        let sealer = TokenSealer::new(SECRET).unwrap();
        let token = EditToken::generate();
        let key = client_key(1);
        let sealed = sealer.seal(&token, &key, 7);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 32 + 16);
        assert!(!sealed.windows(32).any(|w| w == token.0), "the token is not in the clear");
        assert_eq!(sealer.open(&sealed, &key, 7).unwrap().encode(), token.encode());

        let other_key = client_key(2);
        assert_eq!(sealer.open(&sealed, &other_key, 7).err(), Some(DomainError::SealBroken));
        let other_secret = TokenSealer::new(b"another server secret, also 32 bytes").unwrap();
        assert_eq!(other_secret.open(&sealed, &key, 7).err(), Some(DomainError::SealBroken));
        assert_eq!(sealer.open(&sealed, &key, 8).err(), Some(DomainError::SealBroken));
    }

    #[test]
    fn a_seal_of_the_version_bound_to_no_message_still_opens() {
        let sealer = TokenSealer::new(SECRET).unwrap();
        let (token, key) = (EditToken::generate(), client_key(1));
        let nonce = [9u8; NONCE_LEN];
        let payload = Payload { msg: &token.0, aad: &[SEAL_VERSION_UNBOUND] };
        let ciphertext = sealer.cipher(&key).encrypt(Nonce::from_slice(&nonce), payload).unwrap();
        let sealed = [&[SEAL_VERSION_UNBOUND][..], &nonce, &ciphertext].concat();
        assert_eq!(sealer.open(&sealed, &key, 7).unwrap().encode(), token.encode());
    }

    #[test]
    fn a_tampered_seal_does_not_open() {
        let sealer = TokenSealer::new(SECRET).unwrap();
        let key = client_key(1);
        let sealed = sealer.seal(&EditToken::generate(), &key, 7);
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            let opened = sealer.open(&tampered, &key, 7);
            assert_eq!(opened.err(), Some(DomainError::SealBroken), "{i}");
        }
        for cut in [0, 1, NONCE_LEN, sealed.len() - 1] {
            assert!(sealer.open(&sealed[..cut], &key, 7).is_err(), "cut at {cut}");
        }
        assert!(sealer.open(&[0u8; 32], &key, 7).is_err(), "the old XOR form");
        assert!(TokenSealer::is_unsealed(&[0u8; 32]) && TokenSealer::is_unsealed(&[]));
        assert!(!TokenSealer::is_unsealed(&sealed));
    }

    #[test]
    fn a_short_sealing_secret_is_refused() {
        assert_eq!(TokenSealer::new(b"short").err(), Some(DomainError::WeakSealingSecret));
    }

    #[test]
    fn idempotency_keys_must_be_long_random_strings() {
        for good in ["0b7e2a3c-5d41-4f6a-9c2e-8a1b3c4d5e6f", "0B7E2A3C5D414F6A9C2E8A1B3C4D5E6F"] {
            assert!(IdempotencyKey::parse(good.as_bytes()).is_ok(), "{good}");
        }
        let flaw = |raw: &[u8]| match IdempotencyKey::parse(raw) {
            Err(DomainError::GuessableIdempotencyKey(flaw)) => flaw,
            _ => panic!("{raw:?} is refused"),
        };
        assert_eq!(flaw(b""), KeyFlaw::Length(0));
        assert_eq!(flaw(b"retry-123"), KeyFlaw::Length(9));
        assert_eq!(flaw(&[b'a'; 256]), KeyFlaw::Length(256));
        assert_eq!(flaw(b"0b7e2a3c 5d41 4f6a 9c2e 8a1b3c4d5e6f"), KeyFlaw::Alphabet);
        assert_eq!(flaw("0b7e2a3c-5d41-4f6a-9c2e-8a1b3c4d5é".as_bytes()), KeyFlaw::Alphabet);
        assert_eq!(flaw(b"00000000-0000-0000-0000-000000000000"), KeyFlaw::Repetitive(2));
    }
}

//! Properties of every parser that reads client input: the stream position token, the page
//! cursor and limit, the Idempotency-Key, the Authorization header and the JSON body. For
//! any input, each answers without a panic, what it accepts round-trips and stays within
//! its bounds, and it allocates no more than its documented cap (measured by a counting
//! allocator, per thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::Json;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use messages_api::domain::{Cursor, IdempotencyKey, MessageText, PageSize};
use messages_api::error::ApiError;
use messages_api::position::{MAX_ABOVE, Position};
use messages_api::routes::authorization::bearer_token;
use messages_api::routes::messages::{ListParams, MessageInput};
use proptest::prelude::*;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // Ignored while the thread's locals are being torn down.
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        PEAK.with(|peak| peak.set(peak.get().max(live.get())));
    });
}

// SAFETY: every call goes to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `parse` and returns its result with the most bytes it held allocated at once
/// (what it returns included).
fn peak_bytes<T>(parse: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = parse();
    let peak = PEAK.with(Cell::get) - start;
    (result, peak.max(0) as usize)
}

/// A token's set holds at most MAX_ABOVE numbers of 8 bytes; a B-tree node of 11 keys is
/// 192 bytes (internal 288) when full and may be half full: 48 bytes a number is the cap.
const POSITION_CAP: usize = MAX_ABOVE * 48;

/// Token-like text: a floor and parts, with counts and steps at the edges of the numbers.
fn token_like() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        0..50u64,
        Just(i64::MAX as u64 - 1),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(u64::MAX),
        Just(MAX_ABOVE as u64),
        Just(MAX_ABOVE as u64 + 1),
        any::<u64>(),
    ];
    let part = prop_oneof![
        number.clone().prop_map(|step| format!(".{step}")),
        (number.clone(), number.clone()).prop_map(|(step, count)| format!(".{step}x{count}")),
        Just(".1x18446744073709551615".to_owned()),
        Just(".2.1x18446744073709551615".to_owned()),
        Just("x".to_owned()),
        Just(".".to_owned()),
        Just("-1".to_owned()),
    ];
    (number, prop::collection::vec(part, 0..6)).prop_map(|(floor, parts)| {
        let mut token = floor.to_string();
        parts.iter().for_each(|part| token.push_str(part));
        token
    })
}

/// A position built event by event: a floor and events had above it.
fn position() -> impl Strategy<Value = Position> {
    let floor = prop_oneof![0..1_000i64, (i64::MAX - 1_000)..=i64::MAX];
    (floor, prop::collection::btree_set(1..2_000i64, 0..200)).prop_map(|(floor, offsets)| {
        let mut position = Position::at(floor);
        for offset in offsets {
            position.insert(floor.saturating_add(offset));
        }
        position
    })
}

fn check_position(token: &str) -> Result<(), TestCaseError> {
    let (parsed, bytes) = peak_bytes(|| Position::parse(token));
    prop_assert!(bytes <= POSITION_CAP, "{token:?} held {bytes} bytes");
    if let Some(position) = parsed {
        prop_assert!(position.above().len() <= MAX_ABOVE);
        prop_assert!(position.above().iter().all(|&seq| seq > position.floor() + 1));
        prop_assert_eq!(Position::parse(&position.to_string()), Some(position));
    }
    Ok(())
}

proptest! {
    // The strategies aim at the edges on purpose; a failure names its input in full.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn position_tokens_parse_within_their_cap(token in token_like()) {
        check_position(&token)?;
    }

    #[test]
    fn any_text_as_a_position_token_is_answered(token in "\\PC{0,64}") {
        check_position(&token)?;
    }

    #[test]
    fn positions_round_trip_through_their_tokens(position in position()) {
        prop_assert_eq!(Position::parse(&position.to_string()), Some(position));
    }

    #[test]
    fn a_full_token_is_accepted_and_one_more_event_is_not(step in 2..1_000i64) {
        let full = format!("0.{step}x{MAX_ABOVE}");
        prop_assert_eq!(Position::parse(&full).map(|p| p.above().len()), Some(MAX_ABOVE));
        check_position(&full)?;
        prop_assert_eq!(Position::parse(&format!("0.2.{step}x{MAX_ABOVE}")), None);
    }

    #[test]
    fn cursors_round_trip(id in 1..=i64::MAX) {
        let cursor = Cursor::after(id);
        prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn any_text_as_a_cursor_is_answered_within_its_cap(raw in "[A-Za-z0-9_=+/-]{0,256}|\\PC{0,64}") {
        let (decoded, bytes) = peak_bytes(|| Cursor::decode(&raw));
        // At most 30 bytes are decoded, into a buffer of 24.
        prop_assert!(bytes <= 24, "{raw:?} held {bytes} bytes");
        if let Ok(cursor) = decoded {
            prop_assert!(cursor.before_id() > 0);
            prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        }
    }

    #[test]
    fn any_limit_is_a_page_size_of_1_to_100_or_refused(limit in "[0-9]{1,12}|-?[0-9]{1,3}|[a-z%+.]{0,8}") {
        let uri: Uri = format!("/api/messages?limit={limit}").parse().unwrap();
        let (size, bytes) = peak_bytes(|| {
            Query::<ListParams>::try_from_uri(&uri).ok().map(|Query(params)| PageSize::parse(params.limit))
        });
        prop_assert!(bytes <= 256 + 4 * limit.len(), "{limit:?} held {bytes} bytes");
        let expected = limit.parse::<u32>().ok().filter(|n| (1..=PageSize::MAX).contains(n));
        match size {
            Some(Ok(size)) => prop_assert_eq!(Some(size.get()), expected, "{:?}", limit),
            _ => prop_assert_eq!(expected, None, "{:?}", limit),
        }
    }

    #[test]
    fn random_uuids_are_idempotency_keys(bytes in any::<[u8; 16]>(), upper in any::<bool>()) {
        let uuid = uuid::Uuid::from_bytes(bytes);
        for key in [uuid.hyphenated().to_string(), uuid.simple().to_string()] {
            let key = if upper { key.to_uppercase() } else { key };
            prop_assert_eq!(IdempotencyKey::parse(key.as_bytes()).is_ok(), distinct(key.as_bytes()) >= 6);
        }
    }

    #[test]
    fn idempotency_keys_are_long_random_base64url_or_refused_without_allocating(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(prop::sample::select(BASE64URL), 0..300),
            prop::collection::vec(prop::sample::select(&BASE64URL[..6]), 30..40),
        ]
    ) {
        let (parsed, bytes) = peak_bytes(|| IdempotencyKey::parse(&raw));
        let valid = (32..=255).contains(&raw.len())
            && raw.iter().all(|b| BASE64URL.contains(b))
            && distinct(&raw) >= 6;
        prop_assert_eq!(parsed.is_ok(), valid);
        prop_assert!(bytes <= if valid { raw.len() } else { 0 }, "{} bytes", bytes);
    }

    #[test]
    fn any_authorization_header_is_a_bearer_token_or_401(raw in "\\PC{0,80}|[Bb][Ee][Aa][Rr][Ee][Rr] {1,3}[ -~]{0,40}") {
        let Ok(value) = HeaderValue::from_str(&raw) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        let (token, bytes) = peak_bytes(|| bearer_token(&headers));
        prop_assert!(bytes <= 128 + 2 * raw.len(), "{raw:?} held {bytes} bytes");
        match token {
            Ok(token) => {
                prop_assert!(!token.is_empty());
                prop_assert!(raw.len() > 7 && raw[..7].eq_ignore_ascii_case("bearer "));
                prop_assert_eq!(raw[7..].trim_start(), token.as_str());
            }
            Err(error) => prop_assert_eq!(error.status(), StatusCode::UNAUTHORIZED),
        }
    }

    #[test]
    fn bearer_tokens_round_trip(token in "[A-Za-z0-9._~+/=-]{1,64}") {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        prop_assert_eq!(bearer_token(&headers).ok(), Some(token));
    }

    #[test]
    fn any_body_is_a_message_or_a_400_or_422_within_its_cap(body in json_like()) {
        let (parsed, bytes) = peak_bytes(|| Json::<MessageInput>::from_bytes(body.as_bytes()));
        prop_assert!(bytes <= JSON_OVERHEAD + 2 * body.len(), "{body:?} held {bytes} bytes");
        if let Err(rejection) = parsed {
            let status = ApiError::from(rejection).status();
            prop_assert!([StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY].contains(&status));
        }
    }

    #[test]
    fn message_bodies_round_trip(text in any::<String>(), max in 1..2_000u32) {
        let body = serde_json::to_vec(&serde_json::json!({ "message": text })).unwrap();
        let Json(input) = Json::<MessageInput>::from_bytes(&body).unwrap();
        prop_assert_eq!(&input.message, &text);
        match MessageText::parse(&input.message, max) {
            Ok(parsed) => {
                let kept = parsed.as_str();
                prop_assert_eq!(kept, text.trim());
                prop_assert!(!kept.is_empty() && kept.chars().count() <= max as usize);
                prop_assert!(!kept.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')));
            }
            Err(_) => {
                let kept = text.trim();
                prop_assert!(
                    kept.is_empty()
                        || kept.chars().count() > max as usize
                        || kept.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
                );
            }
        }
    }
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What parsing any JSON body may hold beyond twice the body: the message type's own
/// bookkeeping and the error it may build.
const JSON_OVERHEAD: usize = 1024;

fn distinct(bytes: &[u8]) -> usize {
    bytes.iter().collect::<std::collections::HashSet<_>>().len()
}

/// Bodies near the message's shape: objects with the field, other fields, nested values
/// that are costly to hold (arrays of small values), broken syntax and plain text.
fn json_like() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("0".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("null".to_owned()),
        "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let value = leaf.prop_recursive(4, 64, 16, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..16)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec(("[a-z]{1,3}", inner), 0..8).prop_map(|fields| {
                let fields: Vec<String> =
                    fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        (value.clone(), prop::option::of(value.clone())).prop_map(|(message, other)| match other {
            Some(other) => format!("{{\"message\":{message},\"other\":{other}}}"),
            None => format!("{{\"message\":{message}}}"),
        }),
        (1..2_000usize)
            .prop_map(|n| format!("{{\"other\":[{}0],\"message\":\"x\"}}", "0,".repeat(n))),
        (1..2_000usize)
            .prop_map(|n| format!("{{\"other\":[{}[]],\"message\":\"x\"}}", "[],".repeat(n))),
        value,
        "\\PC{0,64}",
    ]
}

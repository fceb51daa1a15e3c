// One schema for both backends; the migrations under migrations/ create it.

diesel::table! {
    messages (id) {
        id -> BigInt,
        message -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        edit_token_hash -> Nullable<Binary>,
    }
}

diesel::table! {
    idempotency_keys (key_hash) {
        key_hash -> Binary,
        request_hash -> Binary,
        message_id -> BigInt,
        token_cipher -> Binary,
        created_at -> Timestamp,
    }
}

diesel::table! {
    message_events (seq) {
        seq -> BigInt,
        kind -> Text,
        message_id -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(messages, message_events);

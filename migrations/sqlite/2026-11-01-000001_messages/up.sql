-- AUTOINCREMENT: ids are never reused after a delete, so cursors stay valid.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    edit_token_hash BLOB
);

CREATE TABLE idempotency_keys (
    key_hash BLOB NOT NULL PRIMARY KEY,
    request_hash BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    token_cipher BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

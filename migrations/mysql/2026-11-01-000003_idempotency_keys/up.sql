-- Remembers a create made with an Idempotency-Key for 24 hours, so a retry gets the same
-- answer. The key is stored only as a hash, the edit token only encrypted with the key.
CREATE TABLE idempotency_keys (
    key_hash BINARY(32) NOT NULL PRIMARY KEY,
    request_hash BINARY(32) NOT NULL,
    message_id BIGINT NOT NULL,
    token_cipher BINARY(32) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    KEY idempotency_keys_created_at (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

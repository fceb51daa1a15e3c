-- Edit tokens kept for idempotent replay were XOR-ed with SHA-256 of the client's key: no
-- tamper check, and whoever reads the database could guess a weak key offline. They are now
-- sealed with ChaCha20-Poly1305 under a server secret (61 bytes). The old form cannot be
-- resealed without the client's key, so it is erased: a retry with such a key still finds
-- its message and creates no duplicate, but its token cannot be handed out again (409).
UPDATE idempotency_keys SET token_cipher = X'' WHERE length(token_cipher) = 32;

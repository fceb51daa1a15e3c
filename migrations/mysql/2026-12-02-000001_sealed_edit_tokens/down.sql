-- The previous version reads only the XOR form: it would replay garbage for a sealed or
-- erased token, so those keys are forgotten instead.
DELETE FROM idempotency_keys WHERE LENGTH(token_cipher) <> 32;

ALTER TABLE idempotency_keys MODIFY token_cipher BINARY(32) NOT NULL;

-- The previous version reads only the XOR form: it would replay garbage for a sealed or
-- erased token, so those keys are forgotten instead.
DELETE FROM idempotency_keys WHERE length(token_cipher) <> 32;

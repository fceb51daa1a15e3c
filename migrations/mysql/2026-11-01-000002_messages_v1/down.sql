ALTER TABLE messages
    DROP COLUMN edit_token_hash,
    DROP COLUMN updated_at,
    DROP COLUMN created_at,
    MODIFY message TEXT,
    MODIFY id INT NOT NULL AUTO_INCREMENT;

-- Upgrades the legacy table in place. Legacy rows keep their id and text; a NULL text
-- becomes the empty string (blank rows stay as they are), and rows without timestamps get
-- the time of this migration.
UPDATE messages SET message = '' WHERE message IS NULL;

ALTER TABLE messages ENGINE = InnoDB;

ALTER TABLE messages CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

ALTER TABLE messages
    MODIFY id BIGINT NOT NULL AUTO_INCREMENT,
    MODIFY message TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    ADD COLUMN created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    ADD COLUMN updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    ADD COLUMN edit_token_hash BINARY(32) NULL;

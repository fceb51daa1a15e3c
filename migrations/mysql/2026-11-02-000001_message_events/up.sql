-- Every change to a message, in order: replicas fan them out to their live streams, and a
-- reconnecting stream resumes from the last event it saw.
CREATE TABLE message_events (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    message_id BIGINT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    KEY message_events_created_at (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

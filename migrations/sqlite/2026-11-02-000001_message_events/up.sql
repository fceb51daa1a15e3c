-- Every change to a message, in order: the live stream fans them out, and a reconnecting
-- stream resumes from the last event it saw.
CREATE TABLE message_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE INDEX message_events_created_at ON message_events (created_at);

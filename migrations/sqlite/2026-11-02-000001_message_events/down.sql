DROP TABLE message_events;

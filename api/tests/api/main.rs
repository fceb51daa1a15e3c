//! Integration tests: the real server over real HTTP, on a fresh SQLite file and on a fresh
//! database of a real MariaDB/MySQL server per test.

mod idempotency;
mod messages;
mod metrics;
mod migrations;
mod replay;
mod service;
mod startup;
mod stream;
mod support;

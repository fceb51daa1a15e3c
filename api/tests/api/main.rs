//! Integration tests: the real server over real HTTP, on a fresh SQLite file and on a fresh
//! database of a real MariaDB/MySQL server per test.

mod idempotency;
#[path = "../common/mariadb.rs"]
mod mariadb;
mod messages;
mod metrics;
mod migration_lock;
mod migrations;
mod replay;
mod service;
mod startup;
mod stream;
mod stream_gaps;
mod support;

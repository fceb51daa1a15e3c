//! Real processes to break: the release-shaped `messages-api` binary as a child process, and
//! databases on a MariaDB server of the test's own (`mariadb::Mariadb`, which it can stop and
//! start again) or on the shared test server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::mariadb;
use diesel::{Connection, MysqlConnection, RunQueryDsl};

/// Held by each fault test for its whole run.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The API binary running as a child process.
pub struct ApiProcess {
    child: Child,
    pub port: u16,
    pub base: String,
    pub log: PathBuf,
}

impl ApiProcess {
    pub fn start(database_url: &str, log_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), database_url, log_dir, env)
    }

    pub fn start_on(port: u16, database_url: &str, log_dir: &Path, env: &[(&str, &str)]) -> Self {
        let log = log_dir.join(format!("api-{port}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_messages-api"))
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("DATABASE_URL", database_url)
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "warn")
            // Fixed, so that a restarted API opens what the killed one sealed.
            .env("TOKEN_SEALING_KEY", "a token sealing secret for the fault tests, 32+ bytes")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the API binary starts");
        Self { child, port, base: format!("http://127.0.0.1:{port}"), log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn wait_healthy(&self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(response) = client.get(self.url("/health")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API did not become healthy within {within:?}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: the way an orchestrator asks a process to stop.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.unwrap().success());
    }

    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the API did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh database, dropped afterwards: on the test server that TEST_MYSQL_URL names (or
/// the throwaway one this process starts), or on a server of the test's own.
pub struct Database {
    server: String,
    name: String,
}

impl Database {
    pub fn create() -> Self {
        Self::create_on(&mariadb::server_url())
    }

    pub fn create_on(server: &str) -> Self {
        let name = format!("faults_{}", uuid::Uuid::new_v4().simple());
        let mut conn = MysqlConnection::establish(server).unwrap();
        diesel::sql_query(format!("CREATE DATABASE `{name}`")).execute(&mut conn).unwrap();
        Self { server: server.to_owned(), name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    pub fn connect(&self) -> MysqlConnection {
        MysqlConnection::establish(&self.url()).expect("connect to the test database")
    }

    /// The server's TCP address.
    pub fn address(&self) -> std::net::SocketAddr {
        let url = url::Url::parse(&self.server).unwrap();
        let host = url.host_str().unwrap().parse().expect("TEST_MYSQL_URL names an IP address");
        std::net::SocketAddr::new(host, url.port().unwrap_or(3306))
    }

    /// The URL of the database with the server's address replaced, to reach it through a proxy.
    pub fn url_via(&self, proxy: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url()).unwrap();
        url.set_ip_host(proxy.ip()).unwrap();
        url.set_port(Some(proxy.port())).unwrap();
        url.into()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut conn) = MysqlConnection::establish(&self.server) {
            let _ = diesel::sql_query(format!("DROP DATABASE `{}`", self.name)).execute(&mut conn);
        }
    }
}

//! Real processes to break: the release-shaped `messages-api` binary as a child process and
//! a MariaDB server of the test's own that can be stopped and started again.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, MysqlConnection, RunQueryDsl};
use tempfile::TempDir;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
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

/// A MariaDB server of this test's own (data directory, socket and port in a temp dir).
pub struct Mariadb {
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
}

const USER: &str = "faults";

impl Mariadb {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut install = Command::new("mariadb-install-db");
        install.args([
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]);
        install.arg(format!("--datadir={}", dir.path().join("data").display()));
        if is_root() {
            install.arg("--user=root");
        }
        let output = install.output().expect("mariadb-install-db runs (make test installs it)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut server = Self { dir, port: free_port(), child: None };
        server.resume();
        let socket = server.socket();
        let sql = format!(
            "CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{USER}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1'; CREATE DATABASE faults;"
        );
        let status = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-uroot",
                &format!("--socket={}", socket.display()),
                "-e",
                &sql,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    /// The URL of the `faults` database.
    pub fn url(&self) -> String {
        format!("mysql://{USER}:{USER}@127.0.0.1:{}/faults", self.port)
    }

    pub fn connect(&self) -> MysqlConnection {
        MysqlConnection::establish(&self.url()).expect("connect to the test MariaDB")
    }

    /// Starts the server (again) on its data directory and port, and waits until it answers.
    pub fn resume(&mut self) {
        let mariadbd = ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mariadbd is installed");
        let dir = self.dir.path();
        let mut command = Command::new(mariadbd);
        command.args([
            "--no-defaults".to_owned(),
            format!("--datadir={}", dir.join("data").display()),
            format!("--socket={}", self.socket().display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_owned(),
            "--skip-name-resolve".to_owned(),
            format!("--pid-file={}", dir.join("mariadb.pid").display()),
            format!("--log-error={}", dir.join("error.log").display()),
        ]);
        if is_root() {
            command.arg("--user=root");
        }
        self.child = Some(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            assert!(Instant::now() < deadline, "MariaDB did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, as an orderly shutdown) and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            child.wait().unwrap();
        }
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh database on the shared test server (TEST_MYSQL_URL), dropped afterwards.
pub struct SharedDatabase {
    server: String,
    name: String,
}

impl SharedDatabase {
    pub fn create() -> Self {
        let server = std::env::var("TEST_MYSQL_URL")
            .expect("TEST_MYSQL_URL is not set: run the tests with `make test`");
        let name = format!("faults_{}", uuid::Uuid::new_v4().simple());
        let mut conn = MysqlConnection::establish(&server).unwrap();
        diesel::sql_query(format!("CREATE DATABASE `{name}`")).execute(&mut conn).unwrap();
        Self { server, name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
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

impl Drop for SharedDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = MysqlConnection::establish(&self.server) {
            let _ = diesel::sql_query(format!("DROP DATABASE `{}`", self.name)).execute(&mut conn);
        }
    }
}

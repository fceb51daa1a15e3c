//! Starts the real server on a free port against a real database: a fresh SQLite file, or a
//! fresh database on the MariaDB/MySQL server of the tests (`crate::mariadb`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use diesel::{Connection, MysqlConnection, RunQueryDsl};
use messages_api::Application;
use messages_api::config::Cli;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};

/// The token sealing secret the test apps share unless a test passes its own.
pub const TEST_SEALING_KEY: &str = "a token sealing secret for the tests, 32+ bytes";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql,
}

/// Generates one test per backend from an `async fn(Backend)`.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )+
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Mysql).await
                }
            )+
        }
    };
}
pub(crate) use both_backends;

/// A database of its own for one test, dropped afterwards.
pub enum TestDatabase {
    Sqlite {
        _dir: TempDir,
        url: String,
    },
    Mysql {
        server: String,
        name: String,
    },
    /// Another test app's database, owned (and dropped) by that app.
    SharedWith {
        url: String,
    },
}

impl TestDatabase {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("messages.db").display());
                Self::Sqlite { _dir: dir, url }
            }
            Backend::Mysql => {
                let server = crate::mariadb::server_url();
                let name = format!("test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = connect(&server, "connect to the MySQL server");
                diesel::sql_query(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                    .execute(&mut conn)
                    .expect("create test database");
                Self::Mysql { server, name }
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { url, .. } | Self::SharedWith { url } => url.clone(),
            Self::Mysql { server, name } => format!("{server}/{name}"),
        }
    }

    /// The URL with its host and port replaced, to route it through a proxy.
    pub fn url_via(&self, address: SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url()).expect("valid url");
        url.set_ip_host(address.ip()).expect("ip host");
        url.set_port(Some(address.port())).expect("port");
        url.into()
    }

    /// Runs SQL on the test database directly, beside the app (either backend).
    pub fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        let url = self.url();
        match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path).expect("open SQLite");
                conn.batch_execute(&format!("PRAGMA busy_timeout = 5000; {sql}"))
            }
            None => self.mysql().batch_execute(sql),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A direct connection to the test database (MySQL only).
    pub fn mysql(&self) -> MysqlConnection {
        connect(&self.url(), "connect to the test database")
    }
}

/// A connection for the test's own setup and checks. A connection that is lost while it is
/// being made is made again, as any client of a load balancer must: through HAProxy to the
/// Galera cluster (`make test-cluster`) one was closed during its handshake, in 1 run of 12,
/// with no reason logged by HAProxy or MariaDB beyond "Aborted connection".
fn connect(url: &str, what: &str) -> MysqlConnection {
    let mut attempts = 1;
    loop {
        match MysqlConnection::establish(url) {
            Ok(conn) => return conn,
            Err(diesel::ConnectionError::BadConnection(error)) if attempts < 3 => {
                eprintln!("{what}: {error}; connecting again");
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Mysql { server, name } = self
            && let Ok(mut conn) = MysqlConnection::establish(server)
        {
            let _ =
                diesel::sql_query(format!("DROP DATABASE IF EXISTS `{name}`")).execute(&mut conn);
        }
    }
}

/// The server, running in this process until dropped or stopped.
pub struct TestApp {
    pub address: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the app on a fresh database and waits until it is healthy.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    pub async fn spawn_with(backend: Backend, args: &[&str]) -> Self {
        let db = TestDatabase::new(backend);
        let url = db.url();
        let app = Self::start(db, &url, args).await;
        app.wait_healthy(Duration::from_secs(30)).await;
        app
    }

    /// A second replica on this app's database.
    pub async fn replica(&self) -> Self {
        let url = self.db.url();
        let replica = Self::start(TestDatabase::SharedWith { url: url.clone() }, &url, &[]).await;
        replica.wait_healthy(Duration::from_secs(30)).await;
        replica
    }

    /// Starts the app on `db` reached at `url`, without waiting for health.
    pub async fn start(db: TestDatabase, url: &str, args: &[&str]) -> Self {
        let mut argv =
            vec!["messages-api", "--port", "0", "--database-url", url, "--log-level", "warn"];
        // One secret for every app and replica of a test; without it a MySQL app would
        // keep a generated one in the working folder.
        if !args.iter().any(|a| a.starts_with("--token-sealing-key")) {
            argv.extend(["--token-sealing-key", TEST_SEALING_KEY]);
        }
        argv.extend_from_slice(args);
        let settings = Cli::try_parse_from(argv).expect("valid test settings").settings;
        let app = Application::build(&settings).await.expect("app builds");
        let address = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            address,
            base: format!("http://{address}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            db,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = self.client.get(self.url("/health")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "the app did not become healthy within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts a message and returns the created body.
    pub async fn create(&self, text: &str) -> Value {
        let response = self.post_json("/api/messages", &json!({ "message": text })).await;
        assert_eq!(response.status(), StatusCode::CREATED, "create {text:?}");
        response.json().await.expect("json body")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    /// PATCH of a message, with the bearer token when given.
    pub async fn patch(&self, id: i64, token: Option<&str>, body: &Value) -> reqwest::Response {
        let request = self.client.patch(self.url(&format!("/api/messages/{id}"))).json(body);
        with_bearer(request, token).send().await.expect("request sent")
    }

    /// DELETE of a message, with the bearer token when given.
    pub async fn delete(&self, id: i64, token: Option<&str>) -> reqwest::Response {
        let request = self.client.delete(self.url(&format!("/api/messages/{id}")));
        with_bearer(request, token).send().await.expect("request sent")
    }

    /// A function that starts the graceful shutdown.
    pub fn stop_handle(&mut self) -> impl FnOnce() + use<> {
        let stop = self.stop.take().expect("not stopped yet");
        move || {
            let _ = stop.send(());
        }
    }

    pub fn take_server(&mut self) -> JoinHandle<anyhow::Result<()>> {
        self.server.take().expect("running")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

fn with_bearer(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Asserts an RFC 9457 problem document with `status`, and returns it.
pub async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["type"].is_string() && body["title"].is_string(), "{body}");
    assert!(!body["detail"].as_str().unwrap_or_default().is_empty(), "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    body
}

/// A TCP forwarder in front of the real database that can cut every connection, to take
/// the database "down" for one test without stopping the shared server.
pub struct Outage {
    pub address: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Outage {
    pub async fn in_front_of(target: &str) -> Self {
        let url = url::Url::parse(target).expect("valid url");
        let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(3306));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, links) = (up.clone(), links.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let target = target.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        })
        .abort_handle();
        Self { address, up, links, accept }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Retries `check` until it returns true, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// Reads a text/event-stream response event by event.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    pub comments: usize,
}

impl SseReader {
    pub async fn open(app: &TestApp, last_event_id: Option<&str>) -> Self {
        let mut request = app.client.get(app.url("/api/messages/stream"));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response =
            request.timeout(Duration::from_secs(3600)).send().await.expect("stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream")
        );
        Self { body: Box::pin(response.bytes_stream()), buffer: String::new(), comments: 0 }
    }

    /// Waits for a comment line (the heartbeat); true if one came within the time.
    pub async fn heartbeat(&mut self, within: Duration) -> bool {
        use futures_util::StreamExt;
        let before = self.comments;
        let deadline = Instant::now() + within;
        while self.comments == before {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(chunk)) => {
                    self.buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
                    while let Some(end) = self.buffer.find("\n\n") {
                        let block: String = self.buffer.drain(..end + 2).collect();
                        assert!(
                            self.parse(&block).is_none(),
                            "only heartbeats while idle: {block:?}"
                        );
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        use futures_util::StreamExt;
        let deadline = Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(chunk)) => {
                    self.buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")))
                }
                Ok(None) => return None,
                Err(_) => panic!("no event within {within:?}"),
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = SseEvent { event: "message".into(), id: None, data: String::new() };
        let mut fields = 0;
        for line in block.lines() {
            if line.is_empty() {
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            fields += 1;
            match name {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "data" => event.data.push_str(value),
                _ => {}
            }
        }
        (fields > 0).then_some(event)
    }
}

/// The API binary as a child process, for what must not be shared with the other tests of
/// this process: the metrics recorder is process-wide.
pub struct ApiProcess {
    child: std::process::Child,
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
}

impl ApiProcess {
    /// Starts the binary on a fresh database and waits until it is healthy.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    pub async fn spawn_with(backend: Backend, args: &[&str]) -> Self {
        let db = TestDatabase::new(backend);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_messages-api"))
            .args(["--host", "127.0.0.1", "--port", &port, "--database-url", &db.url()])
            .args(["--log-level", "warn", "--token-sealing-key", TEST_SEALING_KEY])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the API binary starts");
        let process = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            db,
        };
        let started = &process;
        eventually(Duration::from_secs(30), "the API process is healthy", || async move {
            let response = started.client.get(started.url("/health")).send().await;
            response.is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of one series (name and labels as exposed) on `/metrics`, if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.client.get(self.url("/metrics")).send().await.unwrap().text().await;
        text.unwrap().lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

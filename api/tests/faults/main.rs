//! Fault tests on real processes: the database stopped under load, or vanished without a word
//! (`black_hole`), the API killed during writes, and the API stopped with requests in flight.
//! They run one at a time, whatever `--test-threads` says: they time real outages and
//! restarts, which parallel load would blur.

mod black_hole;
#[path = "../common/mariadb.rs"]
mod mariadb;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use diesel::sql_types::{BigInt, Text};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use mariadb::Mariadb;
use support::{ApiProcess, Database, one_at_a_time};

/// What one request of the load saw.
#[derive(Debug)]
struct Outcome {
    status: u16,
    latency: Duration,
    problem_with_retry_after: bool,
    /// The problem document's type, for an error answer.
    problem_type: Option<String>,
    write: bool,
    created: Option<(i64, String)>,
}

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    message: String,
}

/// The pool of the outage test; its clients are four times as many.
const OUTAGE_POOL_SIZE: usize = 4;

/// Four times as many clients as pooled connections, half creating and half listing, while
/// MariaDB is stopped for ten seconds: every answer is a 2xx or a 503 problem document with
/// Retry-After within 2 s (the wait for a blocking thread counts against the pool timeout),
/// service resumes by itself, and every acknowledged write is in the database afterwards. A
/// create whose connection breaks while it commits may instead get the honest 504
/// outcome-unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_under_load_gives_quick_503s_and_loses_no_acknowledged_write() {
    let _alone = one_at_a_time().await;
    let mut server = Mariadb::start();
    let db = Database::create_on(&server.url());
    let logs = tempfile::tempdir().unwrap();
    let pool_size = OUTAGE_POOL_SIZE.to_string();
    let api = ApiProcess::start(
        &db.url(),
        logs.path(),
        &[("DB_POOL_TIMEOUT_MS", "1000"), ("DB_POOL_SIZE", &pool_size)],
    );
    api.wait_healthy(Duration::from_secs(30)).await;

    let running = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let workers: Vec<_> = (0..4 * OUTAGE_POOL_SIZE)
        .map(|worker| {
            let (client, running, base) = (client.clone(), running.clone(), api.base.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    outcomes.push(one_request(&client, &base, worker, i).await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                outcomes
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    server.stop();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health = client.get(api.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["database"], "disconnected");
    assert_eq!(client.get(api.url("/health/live")).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;

    server.resume();
    let back = Instant::now();
    loop {
        let response = client.get(api.url("/api/messages")).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "2xx again within 5 s of the database");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::Relaxed);

    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    let statuses: HashMap<u16, usize> = outcomes.iter().fold(HashMap::new(), |mut m, o| {
        *m.entry(o.status).or_default() += 1;
        m
    });
    assert!(
        outcomes.iter().all(|o| [200, 201, 503].contains(&o.status)
            || o.status == 504
                && o.write
                && o.problem_type.as_deref() == Some("/problems/outcome-unknown")),
        "only 2xx, 503, and 504 outcome-unknown for a create: {statuses:?}; API log:\n{}",
        std::fs::read_to_string(&api.log).unwrap_or_default()
    );
    assert!(statuses.get(&503).is_some_and(|n| *n > 0), "the outage was seen: {statuses:?}");
    assert!(outcomes.iter().filter(|o| o.status == 503).all(|o| o.problem_with_retry_after));
    let slowest = outcomes.iter().map(|o| o.latency).max().unwrap();
    let slowest_503 = outcomes.iter().filter(|o| o.status == 503).map(|o| o.latency).max();
    eprintln!("outage: {statuses:?}, slowest answer {slowest:?}, slowest 503 {slowest_503:?}");
    assert!(slowest < Duration::from_secs(2), "every answer within 2 s, slowest {slowest:?}");

    let acknowledged: Vec<(i64, String)> = outcomes.into_iter().filter_map(|o| o.created).collect();
    assert!(!acknowledged.is_empty());
    let stored: HashMap<i64, String> = diesel::sql_query("SELECT id, message FROM messages")
        .load::<Row>(&mut db.connect())
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.message))
        .collect();
    for (id, text) in &acknowledged {
        assert_eq!(stored.get(id), Some(text), "acknowledged write {id} is stored");
    }
}

async fn one_request(client: &reqwest::Client, base: &str, worker: usize, i: usize) -> Outcome {
    let started = Instant::now();
    let text = format!("worker {worker} write {i}");
    let write = worker.is_multiple_of(2);
    let request = if write {
        client.post(format!("{base}/api/messages")).json(&json!({ "message": text }))
    } else {
        client.get(format!("{base}/api/messages?limit=20"))
    };
    let response = request.send().await.expect("the API answers");
    let latency = started.elapsed();
    let status = response.status().as_u16();
    let problem_with_retry_after = response.headers().contains_key("retry-after")
        && response.headers()["content-type"] == "application/problem+json";
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let problem_type = body["type"].as_str().map(str::to_owned);
    let created = (status == 201).then(|| (body["id"].as_i64().unwrap(), text));
    Outcome { status, latency, problem_with_retry_after, problem_type, write, created }
}

/// The API is killed with SIGKILL while clients create messages with idempotency keys.
/// After a restart every acknowledged message is there, and retrying the unacknowledged
/// ones with their keys creates no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_during_writes_loses_no_acknowledged_write_on_sqlite() {
    let _alone = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    crash_during_writes(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_during_writes_loses_no_acknowledged_write_on_mysql() {
    let _alone = one_at_a_time().await;
    let db = Database::create();
    let logs = tempfile::tempdir().unwrap();
    crash_during_writes(&db.url(), logs.path()).await;
}

async fn crash_during_writes(url: &str, logs: &std::path::Path) {
    let mut api = ApiProcess::start(url, logs, &[]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (client, base) = (client.clone(), api.base.clone());
            tokio::spawn(async move {
                let (mut acknowledged, mut unanswered) = (Vec::new(), Vec::new());
                for i in 0.. {
                    let text = format!("crash writer {writer} message {i}");
                    match create(&client, &base, &text).await {
                        Ok(id) => acknowledged.push((id, text)),
                        Err(()) => {
                            unanswered.push(text);
                            break;
                        }
                    }
                }
                (acknowledged, unanswered)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.kill_hard();

    let (mut acknowledged, mut unanswered) = (Vec::new(), Vec::new());
    for writer in writers {
        let (a, u) = writer.await.unwrap();
        acknowledged.extend(a);
        unanswered.extend(u);
    }
    assert!(acknowledged.len() > 10, "writes were flowing: {}", acknowledged.len());

    let restarted = ApiProcess::start_on(api.port, url, logs, &[]);
    restarted.wait_healthy(Duration::from_secs(30)).await;
    for text in &unanswered {
        create(&client, &restarted.base, text).await.expect("the retry succeeds");
    }
    let stored = all_messages(&client, &restarted.base).await;
    for (id, text) in &acknowledged {
        assert_eq!(stored.get(id), Some(text), "acknowledged message {id} survived the crash");
    }
    let texts: Vec<&String> = stored.values().collect();
    let distinct: HashSet<&String> = texts.iter().copied().collect();
    assert_eq!(texts.len(), distinct.len(), "no message is stored twice");
    assert_eq!(stored.len(), acknowledged.len() + unanswered.len());
}

/// Creates with a key derived from the text (its SHA-256 in hex), so that the retry after
/// the crash sends the same one; Err when no answer came.
async fn create(client: &reqwest::Client, base: &str, text: &str) -> Result<i64, ()> {
    use sha2::Digest;
    let key: String = sha2::Sha256::digest(text).iter().map(|byte| format!("{byte:02x}")).collect();
    let response = client
        .post(format!("{base}/api/messages"))
        .header("Idempotency-Key", key)
        .json(&json!({ "message": text }))
        .send()
        .await
        .map_err(drop)?;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.map_err(drop)?;
    Ok(body["id"].as_i64().unwrap())
}

async fn all_messages(client: &reqwest::Client, base: &str) -> HashMap<i64, String> {
    let mut stored = HashMap::new();
    let mut url = format!("{base}/api/messages?limit=100");
    loop {
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        for m in page["items"].as_array().unwrap() {
            stored.insert(m["id"].as_i64().unwrap(), m["message"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => url = format!("{base}/api/messages?limit=100&cursor={cursor}"),
            None => return stored,
        }
    }
}

/// SIGTERM with slow requests in flight: they all complete, new connections are refused,
/// and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_slow_requests_refuses_new_ones_and_exits_zero() {
    let _alone = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stop.db").display());
    let mut api = ApiProcess::start(&url, dir.path(), &[("SHUTDOWN_GRACE_SECS", "15")]);
    api.wait_healthy(Duration::from_secs(30)).await;

    let mut slow = Vec::new();
    for i in 0..5 {
        let body = format!(r#"{{"message": "slow request {i}"}}"#);
        let mut stream = TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
        let head = format!(
            "POST /api/messages HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body.as_bytes()[..5]).await.unwrap();
        slow.push((stream, body));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.terminate();

    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", api.port)).await.is_ok() {
        assert!(Instant::now() < deadline, "new connections are refused after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (stream, body) in &mut slow {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    }
    for (stream, _) in &mut slow {
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 201"), "in-flight request completed: {response}");
    }
    let status = api.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
}

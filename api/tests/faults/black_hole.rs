//! A database host that vanishes without a word: no FIN, no RST, no answer. A TCP forwarder
//! in front of MariaDB turns into a black hole (every connection stays open and moves no
//! data), then forwards new connections again while the old ones stay stuck for good.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::{ApiProcess, Database, one_at_a_time};

/// The API's request limit (its default, spelled out because the bound below depends on it).
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
const POOL_SIZE: usize = 4;
const HOLE: Duration = Duration::from_secs(15);
const RECOVERY: Duration = Duration::from_secs(30);

/// Eight clients on a pool of four, half writing: during the hole every answer comes within
/// the request limit + 1 s; after it, the API serves writes and /health says healthy again
/// within 30 s, without a restart, although the connections of the hole never move again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_vanishes_silently_does_not_starve_the_api_for_good() {
    let _alone = one_at_a_time().await;
    let db = Database::create();
    let forwarder = Forwarder::start(db.address()).await;
    let logs = tempfile::tempdir().unwrap();
    let pool_size = POOL_SIZE.to_string();
    let request_limit = REQUEST_LIMIT.as_secs().to_string();
    let api = ApiProcess::start(
        &db.url_via(forwarder.address),
        logs.path(),
        &[
            ("DB_POOL_SIZE", &pool_size),
            ("DB_POOL_TIMEOUT_MS", "1000"),
            ("REQUEST_TIMEOUT_SECS", &request_limit),
        ],
    );
    api.wait_healthy(Duration::from_secs(30)).await;

    let running = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let clients: Vec<_> = (0..2 * POOL_SIZE)
        .map(|worker| {
            let (client, running, base) = (client.clone(), running.clone(), api.base.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while running.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let request = if worker % 2 == 0 {
                        client.post(format!("{base}/api/messages")).json(&json!({"message": "x"}))
                    } else {
                        client.get(format!("{base}/api/messages?limit=5"))
                    };
                    let status = request.send().await.map(|r| r.status().as_u16());
                    answers.push((status.ok(), started.elapsed()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    forwarder.black_hole();
    tokio::time::sleep(HOLE).await;
    forwarder.heal();
    let healed = Instant::now();
    let mut health = None;
    loop {
        let created = client
            .post(api.url("/api/messages"))
            .json(&json!({"message": "after the hole"}))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if health.is_none() {
            let answer = client.get(api.url("/health")).send().await.map(|r| r.status());
            health = answer.is_ok_and(|s| s == 200).then(|| healed.elapsed());
        }
        if matches!(created, Ok(201)) && health.is_some() {
            break;
        }
        assert!(
            healed.elapsed() < RECOVERY,
            "writes ({created:?}) and /health ({health:?}) are back within {RECOVERY:?} of the \
             heal; API log:\n{}",
            std::fs::read_to_string(&api.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("a write succeeded {:?} after the heal, /health {health:?}", healed.elapsed());
    let page: Value =
        client.get(api.url("/api/messages?limit=1")).send().await.unwrap().json().await.unwrap();
    assert!(page["items"][0]["id"].is_i64(), "reads are served too: {page}");
    running.store(false, Ordering::Relaxed);

    let mut answers = Vec::new();
    for worker in clients {
        answers.extend(worker.await.unwrap());
    }
    let slowest = answers.iter().map(|(_, latency)| *latency).max().unwrap();
    eprintln!("{} answers, slowest {slowest:?}", answers.len());
    assert!(answers.iter().all(|(status, _)| status.is_some()), "every request was answered");
    assert!(
        slowest <= REQUEST_LIMIT + Duration::from_secs(1),
        "every answer within the request limit + 1 s, slowest {slowest:?}"
    );
}

/// A TCP forwarder that can turn into a black hole.
struct Forwarder {
    address: SocketAddr,
    /// False while the hole lasts: new connections are accepted and held, never forwarded.
    forwarding: Arc<AtomicBool>,
    /// Bumped when a hole opens: every connection forwarded so far freezes for good.
    holes: watch::Sender<u64>,
    accepting: tokio::task::JoinHandle<()>,
}

/// Connections kept open without moving a byte, until the forwarder is dropped.
type Held = Arc<Mutex<Vec<TcpStream>>>;

impl Forwarder {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let forwarding = Arc::new(AtomicBool::new(true));
        let (holes, _) = watch::channel(0);
        let held = Held::default();
        let accepting = tokio::spawn({
            let (forwarding, holes) = (forwarding.clone(), holes.clone());
            async move {
                let mut pumps = tokio::task::JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    while pumps.try_join_next().is_some() {}
                    if !forwarding.load(Ordering::SeqCst) {
                        held.lock().unwrap().push(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else { continue };
                    pumps.spawn(pump(client, server, holes.subscribe(), held.clone()));
                }
            }
        });
        Self { address, forwarding, holes, accepting }
    }

    fn black_hole(&self) {
        self.forwarding.store(false, Ordering::SeqCst);
        self.holes.send_modify(|holes| *holes += 1);
    }

    /// New connections are forwarded again; those of the hole stay stuck.
    fn heal(&self) {
        self.forwarding.store(true, Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies both ways until either side closes, or until a hole opens: then both sockets are
/// held open, and nothing moves on them again.
async fn pump(
    mut client: TcpStream,
    mut server: TcpStream,
    mut holes: watch::Receiver<u64>,
    held: Held,
) {
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = holes.changed() => held.lock().unwrap().extend([client, server]),
    }
}

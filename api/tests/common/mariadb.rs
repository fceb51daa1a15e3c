//! The MariaDB/MySQL server of the MySQL tests: the one TEST_MYSQL_URL names, or else a
//! throwaway MariaDB that this test process starts on first use, exactly as
//! scripts/lib/mariadb.sh starts one (its own data directory, socket and free port under a
//! temporary directory, a `messages` user), and that ends with the process.
//!
//! A watchdog shell is the server's parent and holds the read end of a pipe whose write end
//! only this test process holds. However the process ends — tests done, a panic, Ctrl-C,
//! `kill -9` — the kernel closes that end, and the watchdog stops the server (SIGTERM, as a
//! shutdown should be) and removes its files. (`PR_SET_PDEATHSIG` would not do: it fires
//! when the spawning *thread* ends, which is the test's thread, and it removes no files.)

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// What the MySQL tests say when they have no server to run on.
const NEEDS_A_SERVER: &str = "MySQL tests need a server: set \
     TEST_MYSQL_URL=mysql://user:pass@127.0.0.1:PORT or install mariadb-server \
     (sudo apt-get install mariadb-server)";

/// The user the tests connect as, created as scripts/lib/mariadb.sh creates it.
const USER: &str = "messages";

/// Runs the server given as its arguments until a line arrives on standard input (stop it,
/// keep its files) or standard input ends (this test process has ended: stop it, remove
/// the directory `$1`), or until the server exits by itself (keep its files, to be read).
/// Exits with the server's status.
const WATCHDOG: &str = r#"
dir=$1; shift
exec 3<&0 </dev/null
"$@" 3<&- &
server=$!
{ if read -r _ <&3; then kill -TERM "$server"; exit 1; fi; kill -TERM "$server"; } 2>/dev/null &
reader=$!
wait "$server"
status=$?
kill "$reader" 2>/dev/null
if wait "$reader"; then rm -rf -- "$dir"; fi
exit "$status"
"#;

/// The server URL (user, password, host and port; no database) for the MySQL tests of this
/// process. Panics with one line saying what is needed when there is no server.
pub fn server_url() -> String {
    // A static is never dropped: the server lives until the process ends, then its
    // watchdog stops it and removes its files.
    static SERVER: OnceLock<Result<Mariadb, String>> = OnceLock::new();
    if let Ok(url) = std::env::var("TEST_MYSQL_URL")
        && !url.is_empty()
    {
        return url;
    }
    match SERVER.get_or_init(Mariadb::try_start) {
        Ok(server) => server.url(),
        Err(reason) => panic!("{reason}"),
    }
}

/// A MariaDB server with its own data directory, socket and port. Dropped, it stops and its
/// files go; when the test process ends first, however it ends, its watchdog does that.
pub struct Mariadb {
    dir: TempDir,
    port: u16,
    mariadbd: PathBuf,
    watchdog: Option<Child>,
}

impl Mariadb {
    /// Installs a fresh data directory, starts the server and creates the `messages` user.
    fn try_start() -> Result<Self, String> {
        let mariadbd = find_mariadbd()?;
        let dir = tempfile::Builder::new()
            .prefix("messages-mariadb.")
            .tempdir()
            .map_err(|e| format!("a temporary directory for MariaDB: {e}"))?;
        let log = dir.path().join("install.log");
        let output = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let status = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .args(as_root())
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null())
            .stdout(output.try_clone().map_err(|e| e.to_string())?)
            .stderr(output)
            .status()
            .map_err(|e| format!("mariadb-install-db: {e} (install mariadb-server)"))?;
        if !status.success() {
            return Err(format!("mariadb-install-db failed ({status}):\n{}", read(&log)));
        }
        let mut server = Self { dir, port: free_port(), mariadbd, watchdog: None };
        server.launch()?;
        server.sql(&format!(
            "CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{USER}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;"
        ))?;
        Ok(server)
    }

    /// The server URL without a database, as the `messages` user.
    pub fn url(&self) -> String {
        format!("mysql://{USER}:{USER}@127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, as an orderly shutdown) and waits until it has exited; its
    /// files stay.
    pub fn stop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Some(mut stdin) = watchdog.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
            let _ = watchdog.wait();
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let mut watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "mariadb-watchdog"])
            .arg(dir)
            .arg(&self.mariadbd)
            .arg("--no-defaults")
            .args(as_root())
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
            .arg(format!("--log-error={}", self.error_log().display()))
            .arg("--max-connections=500")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C ends the tests, whose end then
            // stops the server.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("sh (the MariaDB watchdog): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            if let Ok(Some(status)) = watchdog.try_wait() {
                return Err(format!("MariaDB exited ({status}):\n{}", read(&self.error_log())));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "MariaDB did not answer within 60 s:\n{}",
                    read(&self.error_log())
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.watchdog = Some(watchdog);
        Ok(())
    }

    fn answers(&self) -> bool {
        Command::new("mariadb-admin")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "ping"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs SQL as root through the socket.
    fn sql(&self, sql: &str) -> Result<(), String> {
        let output = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-e", sql])
            .output()
            .map_err(|e| format!("mariadb (the client): {e} (install mariadb-client)"))?;
        match output.status.success() {
            true => Ok(()),
            false => Err(format!("{sql}: {}", String::from_utf8_lossy(&output.stderr))),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }
}

/// A server of a test's own, to break.
#[allow(dead_code, reason = "the fault tests stop and resume a server; the HTTP tests do not")]
impl Mariadb {
    /// Installs a fresh data directory, starts the server and creates the `messages` user.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// Starts the server again on its data directory and port, and waits until it answers.
    pub fn resume(&mut self) {
        self.launch().unwrap_or_else(|reason| panic!("{reason}"));
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `mariadbd`: TEST_MARIADBD when set (set it to a missing path to see the tests without a
/// server), else the one on PATH or in /usr/sbin.
fn find_mariadbd() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TEST_MARIADBD") {
        let path = PathBuf::from(path);
        return match is_executable(&path) {
            true => Ok(path),
            false => {
                Err(format!("{NEEDS_A_SERVER}; TEST_MARIADBD={} is no program", path.display()))
            }
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("mariadbd"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| NEEDS_A_SERVER.to_owned())
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// `--user=root` when running as root, which mariadbd otherwise refuses.
fn as_root() -> Option<&'static str> {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid());
    (euid.ok() == Some(0)).then_some("--user=root")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

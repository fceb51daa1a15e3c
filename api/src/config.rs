//! Typed settings. Every setting is a command-line flag and an environment variable; a
//! `.env` file is read in development. Secrets can also come from `*_FILE` paths, and are
//! held as `SecretString`s: `Debug` shows them redacted, and they are wiped when dropped.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Parser)]
#[command(name = "messages-api", version, about = "JSON REST API of the two-tier message board")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Run pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Exit 0 if the configured server's /health answers 200 (for container health checks).
    Healthcheck,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Longest accepted message, in Unicode scalar values.
    #[arg(long, env = "MAX_MESSAGE_CHARS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_message_chars: u32,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,
    /// A request that takes longer than this gets a 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Token (at least 32 characters) that may edit and delete any message (unset: no admin).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// File holding the admin token (for container secrets).
    #[arg(long, env = "ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Server secret (at least 32 characters) that seals the edit tokens kept for idempotent
    /// replay; every replica needs the same one. Required with MySQL [default with SQLite:
    /// generated once into the SQLite file's folder]
    #[arg(long, env = "TOKEN_SEALING_KEY", hide_env_values = true)]
    pub token_sealing_key: Option<SecretString>,
    /// File holding the token sealing secret (for container secrets).
    #[arg(long, env = "TOKEN_SEALING_KEY_FILE", conflicts_with = "token_sealing_key")]
    pub token_sealing_key_file: Option<PathBuf>,
    /// Folder of static files served at / (development; nginx serves them in production).
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `messages_api=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// `mysql://USER:PASSWORD@HOST:PORT/DB` or `sqlite://PATH` [default: sqlite://data/messages.db,
    /// or built from the MYSQL_* variables when MYSQL_HOST is set]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// MySQL host, used when DATABASE_URL is unset (the original Flask app's variables).
    #[arg(long, env = "MYSQL_HOST")]
    pub mysql_host: Option<String>,
    /// MySQL port.
    #[arg(long, env = "MYSQL_PORT", default_value_t = 3306)]
    pub mysql_port: u16,
    /// MySQL user (required with MYSQL_HOST).
    #[arg(long, env = "MYSQL_USER")]
    pub mysql_user: Option<String>,
    /// MySQL password.
    #[arg(long, env = "MYSQL_PASSWORD", hide_env_values = true)]
    pub mysql_password: Option<SecretString>,
    /// File holding the MySQL password (for container secrets).
    #[arg(long, env = "MYSQL_PASSWORD_FILE", conflicts_with = "mysql_password")]
    pub mysql_password_file: Option<PathBuf>,
    /// MySQL database name (required with MYSQL_HOST).
    #[arg(long, env = "MYSQL_DB")]
    pub mysql_db: Option<String>,
    /// Database connections in the pool [default: 2 per CPU core, at least 4].
    #[arg(long = "db-pool-size", env = "DB_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub pool_size: Option<u32>,
    /// How long a request waits for a free connection before answering 503.
    #[arg(long = "db-pool-timeout-ms", env = "DB_POOL_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=2000))]
    pub pool_timeout_ms: u64,
    /// Run pending migrations at start.
    #[arg(long, env = "RUN_MIGRATIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_migrations: bool,
}

/// Where the data lives, decided from the settings.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Mysql { url: String },
    Sqlite { path: PathBuf },
}

/// The MySQL URL without its password.
impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mysql { url } => {
                let mut shown = url::Url::parse(url).map_err(|_| fmt::Error)?;
                if shown.password().is_some() {
                    shown.set_password(Some("REDACTED")).map_err(|()| fmt::Error)?;
                }
                f.debug_struct("Mysql").field("url", &shown.as_str()).finish()
            }
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
        }
    }
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/messages.db";
/// The token sealing secret generated when none is configured, beside the SQLite file.
const GENERATED_SEALING_KEY: &str = "token-sealing.key";
/// The shortest admin token accepted: 32 characters are 128 bits as hex.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// The token sealing secret and where it came from.
pub enum SealingSecret {
    Configured(SecretString),
    /// Generated by an earlier start (or this one) beside the SQLite file.
    Generated {
        secret: SecretString,
        path: PathBuf,
    },
    /// Generated for this process only, because the data folder cannot keep it (a read-only
    /// container): replays after a restart cannot open their tokens.
    Ephemeral {
        secret: SecretString,
        path: PathBuf,
        error: String,
    },
}

impl DatabaseSettings {
    pub fn target(&self) -> anyhow::Result<DatabaseTarget> {
        let url = match (&self.database_url, &self.mysql_host) {
            (Some(url), _) => url.expose_secret().to_owned(),
            (None, Some(host)) => self.mysql_url_from_parts(host)?,
            (None, None) => DEFAULT_DATABASE_URL.to_owned(),
        };
        parse_database_url(&url)
    }

    pub fn pool_size(&self) -> u32 {
        self.pool_size.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            // Measured with `make bench`: more connections only add context switches.
            u32::try_from(cores * 2).unwrap_or(u32::MAX).max(4)
        })
    }

    pub fn pool_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_timeout_ms)
    }

    fn mysql_url_from_parts(&self, host: &str) -> anyhow::Result<String> {
        let user = self.mysql_user.as_deref().context("MYSQL_HOST is set but MYSQL_USER is not")?;
        let db = self.mysql_db.as_deref().context("MYSQL_HOST is set but MYSQL_DB is not")?;
        let password = secret(self.mysql_password.as_ref(), self.mysql_password_file.as_deref())?;
        let mut url = url::Url::parse(&format!("mysql://{host}"))
            .with_context(|| format!("MYSQL_HOST {host:?} is not a valid host name"))?;
        let invalid = |_| anyhow::anyhow!("MYSQL_HOST {host:?} is not a valid host name");
        url.set_username(user).map_err(invalid)?;
        url.set_password(password.as_ref().map(ExposeSecret::expose_secret)).map_err(invalid)?;
        url.set_port(Some(self.mysql_port)).map_err(invalid)?;
        url.set_path(db);
        Ok(url.into())
    }
}

impl Settings {
    /// ADMIN_TOKEN or its file; refused when shorter than `MIN_ADMIN_TOKEN_CHARS`.
    pub fn admin_token(&self) -> anyhow::Result<Option<SecretString>> {
        let token = secret(self.admin_token.as_ref(), self.admin_token_file.as_deref())?;
        if let Some(token) = &token {
            let chars = token.expose_secret().chars().count();
            if chars < MIN_ADMIN_TOKEN_CHARS {
                bail!(
                    "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters long (the \
                     one given has {chars}): it opens every message. Generate one with \
                     `openssl rand -hex 32`."
                );
            }
        }
        Ok(token)
    }

    /// TOKEN_SEALING_KEY or its file. With SQLite (one server) a key is generated beside
    /// the database file when none is set; with MySQL, where replicas share the data, each
    /// would generate its own and none could open another's seals, so one must be set.
    pub fn token_sealing_secret(&self) -> anyhow::Result<SealingSecret> {
        let configured =
            secret(self.token_sealing_key.as_ref(), self.token_sealing_key_file.as_deref())?;
        if let Some(secret) = configured {
            return Ok(SealingSecret::Configured(secret));
        }
        let folder = match self.database.target()? {
            DatabaseTarget::Sqlite { path } => path
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            DatabaseTarget::Mysql { .. } => bail!(
                "TOKEN_SEALING_KEY (or TOKEN_SEALING_KEY_FILE) must be set with MySQL: every \
                 replica must seal the edit tokens kept for idempotent replay with the same \
                 key, or a retry that reaches another replica is answered 409. Generate one \
                 with `openssl rand -hex 32` and give it to every replica."
            ),
        };
        let path = folder.join(GENERATED_SEALING_KEY);
        Ok(match load_or_generate_secret(&path) {
            Ok(secret) => SealingSecret::Generated { secret, path },
            Err(error) => SealingSecret::Ephemeral {
                secret: random_secret(),
                path,
                error: format!("{error:#}"),
            },
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// How long a statement may wait for a lock before the database gives it up: a second
    /// past the request's limit, so that the request's own answer comes first and the
    /// server then frees the connection of the work it gave up.
    pub fn db_lock_timeout(&self) -> Duration {
        self.request_timeout() + Duration::from_secs(1)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

fn parse_database_url(url: &str) -> anyhow::Result<DatabaseTarget> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            bail!("DATABASE_URL {url:?} names no file: use sqlite://PATH");
        }
        return Ok(DatabaseTarget::Sqlite { path: PathBuf::from(path) });
    }
    if url.starts_with("mysql://") {
        return Ok(DatabaseTarget::Mysql { url: url.to_owned() });
    }
    bail!("DATABASE_URL must start with mysql:// or sqlite://")
}

/// 256 random bits as 64 hex digits.
fn random_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into()
}

/// Reads the secret at `path`, first writing a random one there if there is none. The new
/// file is written aside and linked into place, so that a process starting at the same
/// moment reads either no file or the whole secret, and both end up with the same one.
fn load_or_generate_secret(path: &Path) -> anyhow::Result<SecretString> {
    if let Some(secret) = secret(None, Some(path)).ok().flatten() {
        return Ok(secret);
    }
    let dir = path.parent().context("the key file has no folder")?;
    std::fs::create_dir_all(dir)?;
    let generated = random_secret();
    let aside = dir.join(format!(".{GENERATED_SEALING_KEY}.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let line = format!("{}\n", generated.expose_secret());
    std::io::Write::write_all(&mut options.open(&aside)?, line.as_bytes())?;
    let linked = std::fs::hard_link(&aside, path);
    std::fs::remove_file(&aside)?;
    match linked {
        Ok(()) => Ok(generated),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            secret(None, Some(path))?.context("the key file is empty")
        }
        Err(error) => Err(error.into()),
    }
}

/// A secret given directly or as a file (trailing newline removed); an empty value is unset.
fn secret(
    value: Option<&SecretString>,
    file: Option<&Path>,
) -> anyhow::Result<Option<SecretString>> {
    let value: SecretString = match (value, file) {
        (Some(value), _) => value.clone(),
        (None, Some(path)) => SecretString::from(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read secret file {}", path.display()))?
                .trim_end_matches(['\r', '\n']),
        ),
        (None, None) => return Ok(None),
    };
    Ok(Some(value).filter(|v| !v.expose_secret().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["messages-api"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("valid arguments").settings
    }

    #[test]
    fn sqlite_url_names_a_path() {
        let s = settings(&["--database-url", "sqlite:///var/lib/m.db"]);
        assert_eq!(
            s.database.target().unwrap(),
            DatabaseTarget::Sqlite { path: "/var/lib/m.db".into() }
        );
    }

    #[test]
    fn mysql_url_is_built_from_the_flask_variables_with_escaping() {
        let s = settings(&[
            "--mysql-host",
            "db",
            "--mysql-user",
            "app",
            "--mysql-password",
            "p@ss/word",
            "--mysql-db",
            "myDb",
        ]);
        assert_eq!(
            s.database.target().unwrap(),
            DatabaseTarget::Mysql { url: "mysql://app:p%40ss%2Fword@db:3306/myDb".into() }
        );
    }

    #[test]
    fn secret_file_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-of-at-least-32-characters\n").unwrap();
        let s = settings(&["--admin-token-file", path.to_str().unwrap()]);
        let token = s.admin_token().unwrap().unwrap();
        assert_eq!(token.expose_secret(), "s3cret-of-at-least-32-characters");
    }

    #[test]
    fn token_sealing_key_is_generated_once_beside_the_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let s = settings(&["--database-url", &url]);
        let SealingSecret::Generated { secret: first, path } = s.token_sealing_secret().unwrap()
        else {
            panic!("generated");
        };
        assert_eq!(path, dir.path().join("token-sealing.key"));
        assert_eq!(first.expose_secret().len(), 64);
        let SealingSecret::Generated { secret: again, .. } = s.token_sealing_secret().unwrap()
        else {
            panic!("generated");
        };
        assert_eq!(first.expose_secret(), again.expose_secret(), "a restart keeps the key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "only the owner reads it");
        }
    }

    #[test]
    fn token_sealing_key_lives_in_memory_when_the_data_folder_is_not_writable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let url = format!("sqlite://{}", file.join("m.db").display());
        let s = settings(&["--database-url", &url]);
        let SealingSecret::Ephemeral { secret, .. } = s.token_sealing_secret().unwrap() else {
            panic!("ephemeral");
        };
        assert_eq!(secret.expose_secret().len(), 64);
    }

    #[test]
    fn configured_token_sealing_key_wins() {
        let s = settings(&["--token-sealing-key", "k".repeat(40).as_str()]);
        assert!(
            matches!(s.token_sealing_secret().unwrap(), SealingSecret::Configured(k) if k.expose_secret().len() == 40)
        );
    }

    #[test]
    fn token_sealing_key_is_required_with_mysql() {
        let s = settings(&["--database-url", "mysql://app:pw@db:3306/messages"]);
        let error = s.token_sealing_secret().err().expect("refused").to_string();
        assert!(error.contains("TOKEN_SEALING_KEY") && error.contains("MySQL"), "{error}");
    }

    #[test]
    fn an_admin_token_shorter_than_32_characters_is_refused() {
        let s = settings(&["--admin-token", &"a".repeat(31)]);
        let error = s.admin_token().expect_err("refused").to_string();
        assert!(error.contains("at least 32 characters") && !error.contains("aaa"), "{error}");
        assert!(settings(&["--admin-token", &"é".repeat(32)]).admin_token().is_ok());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let s = settings(&[
            "--database-url",
            "mysql://app:url-password@db:3306/messages",
            "--mysql-password",
            "mysql-password",
            "--admin-token",
            "admin-token-of-at-least-32-characters",
            "--token-sealing-key",
            "token-sealing-key-of-at-least-32-characters",
        ]);
        let shown = format!("{s:?} {:?}", s.database.target().unwrap());
        for secret in ["url-password", "mysql-password", "admin-token-of", "token-sealing-key-of"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("mysql://app:REDACTED@db:3306/messages"), "{shown}");
    }

    #[test]
    fn unknown_database_scheme_is_rejected() {
        let s = settings(&["--database-url", "postgres://x"]);
        assert!(s.database.target().is_err());
    }
}

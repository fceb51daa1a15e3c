//! Settings that would run the service unsafely stop it at start, with a message that says
//! what to set.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args` and no environment of the developer's; returns whether it
/// was still serving after a few seconds (then it is stopped), and what it wrote to stderr.
fn start(args: &[&str]) -> (bool, String) {
    let folder = tempfile::tempdir().unwrap();
    let stderr = folder.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_messages-api"))
        .args(["--host", "127.0.0.1", "--port", "0", "--log-level", "warn"])
        .args(args)
        .env_clear()
        // No .env of the work tree is read from here.
        .current_dir(folder.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("the binary runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    let serving = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (serving, std::fs::read_to_string(&stderr).unwrap())
}

#[test]
fn a_short_admin_token_stops_the_start() {
    let folder = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", folder.path().join("m.db").display());
    let file = folder.path().join("admin_token");
    std::fs::write(&file, "short-but-secret\n").unwrap();
    for given in
        [["--admin-token", "short-but-secret"], ["--admin-token-file", file.to_str().unwrap()]]
    {
        let (started, stderr) =
            start(&[&["--database-url", database.as_str()][..], &given].concat());
        assert!(!started, "{given:?}");
        assert!(stderr.contains("ADMIN_TOKEN must be at least 32 characters"), "{stderr}");
        assert!(!stderr.contains("short-but-secret"), "the token is not printed: {stderr}");
    }
}

#[test]
fn mysql_without_a_token_sealing_key_stops_the_start() {
    // Refused before any connection: nothing needs to listen there.
    let (started, stderr) = start(&["--database-url", "mysql://app:pw@127.0.0.1:1/messages"]);
    assert!(!started);
    assert!(stderr.contains("TOKEN_SEALING_KEY"), "{stderr}");
    assert!(stderr.contains("replica"), "says why: {stderr}");
    assert!(!stderr.contains("app:pw"), "the URL's password is not printed: {stderr}");
}

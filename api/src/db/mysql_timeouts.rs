//! Time limits on a MySQL connection's network waits.
//!
//! The client library (MariaDB Connector/C, or libmysqlclient) waits for the server without a
//! limit unless `MYSQL_OPT_READ_TIMEOUT` and its siblings are set on the handle before it
//! connects. A server host that vanishes without a word (no FIN, no RST) then holds every
//! query in flight until TCP gives up, about 15 minutes, and with it the blocking thread the
//! query runs on; or forever, when a proxy in between keeps the connection open. TCP
//! keepalive and `TCP_USER_TIMEOUT` miss that second case, so the limit belongs to the
//! client library, which applies it to each wait for the server.
//!
//! diesel 2.3 creates the handle inside `MysqlConnection::establish` and sets no timeouts
//! (its URL parameters are the TLS ones and `unix_socket`), and it hands out neither the
//! handle nor the socket. So this module defines the library's `mysql_real_connect`: within
//! this program that definition comes before the shared library's, so diesel's call lands
//! here; it sets the limits that `establish` put in place for the calling thread, then calls
//! the library's own function. A build that links the library statically fails to link (two
//! definitions) instead of running without limits.

use std::cell::Cell;
use std::ffi::{c_char, c_uint, c_ulong, c_void};
use std::sync::LazyLock;
use std::time::Duration;

use diesel::{Connection, ConnectionError, MysqlConnection};
use mysqlclient_sys::{MYSQL, mysql_option, mysql_options};

/// The longest a MySQL connection waits for its server, in whole seconds as the library
/// counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NetTimeouts {
    /// To connect and read the server's greeting.
    pub connect: Duration,
    /// For each read of an answer and each write of a request.
    pub read_write: Duration,
}

thread_local! {
    /// The limits of the connection this thread is establishing.
    static ESTABLISHING: Cell<Option<NetTimeouts>> = const { Cell::new(None) };
}

/// Connects with the given limits on every wait for the server.
#[inline(never)]
pub(super) fn establish(
    url: &str,
    timeouts: NetTimeouts,
) -> Result<MysqlConnection, ConnectionError> {
    ESTABLISHING.set(Some(timeouts));
    let connected = MysqlConnection::establish(url);
    ESTABLISHING.set(None);
    connected
}

type RealConnect = unsafe extern "C" fn(
    *mut MYSQL,
    *const c_char,
    *const c_char,
    *const c_char,
    *const c_char,
    c_uint,
    *const c_char,
    c_ulong,
) -> *mut MYSQL;

/// The client library's `mysql_real_connect`, the next definition after this program's.
static LIBRARY_CONNECT: LazyLock<RealConnect> = LazyLock::new(|| {
    // SAFETY: dlsym with a NUL-terminated name; the symbol, when found, is the library's
    // function of exactly this C signature.
    unsafe {
        let symbol = libc::dlsym(libc::RTLD_NEXT, c"mysql_real_connect".as_ptr());
        assert!(!symbol.is_null(), "the MySQL client library has no mysql_real_connect");
        std::mem::transmute::<*mut c_void, RealConnect>(symbol)
    }
});

/// The client library's `mysql_real_connect`, with the limits of `establish` set first.
///
/// # Safety
/// The caller's contract is the library's: `mysql` comes from `mysql_init`, the strings are
/// NUL-terminated or null.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // The C function's signature.
pub unsafe extern "C" fn mysql_real_connect(
    mysql: *mut MYSQL,
    host: *const c_char,
    user: *const c_char,
    passwd: *const c_char,
    db: *const c_char,
    port: c_uint,
    unix_socket: *const c_char,
    client_flag: c_ulong,
) -> *mut MYSQL {
    if let Some(timeouts) = ESTABLISHING.get() {
        let seconds =
            |limit: Duration| c_uint::try_from(limit.as_secs().max(1)).unwrap_or(c_uint::MAX);
        for (option, limit) in [
            (mysql_option::MYSQL_OPT_CONNECT_TIMEOUT, timeouts.connect),
            (mysql_option::MYSQL_OPT_READ_TIMEOUT, timeouts.read_write),
            (mysql_option::MYSQL_OPT_WRITE_TIMEOUT, timeouts.read_write),
        ] {
            let value = seconds(limit);
            // SAFETY: a handle from mysql_init; these options take a pointer to an unsigned
            // int, read before the call returns. Both client libraries know all three, so
            // the call cannot fail.
            unsafe { mysql_options(mysql, option, (&raw const value).cast()) };
        }
    }
    // SAFETY: the arguments are passed on unchanged under the library's own contract.
    unsafe { LIBRARY_CONNECT(mysql, host, user, passwd, db, port, unix_socket, client_flag) }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;

    /// A server that accepts the connection and never says a word: without the limits the
    /// connect would wait for its greeting forever.
    #[test]
    fn a_server_that_never_answers_fails_the_connect_within_its_limit() {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("mysql://user:pass@{}/db", silent.local_addr().unwrap());
        let limit = Duration::from_secs(1);
        let (answer, answered) = std::sync::mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let connected = establish(&url, NetTimeouts { connect: limit, read_write: limit });
            let _ = answer.send(connected.is_ok());
        });
        let connected = answered.recv_timeout(limit * 5).expect("the connect gives up in time");
        assert!(!connected);
        assert!(started.elapsed() >= limit, "it waited for the greeting first");
    }
}

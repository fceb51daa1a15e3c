//! One HTTP/1.1 connection per caller: the subscribers must each hold a socket of their own.

use std::net::SocketAddr;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub type Body = http_body_util::Full<bytes::Bytes>;

/// A connection to `target`; dropping it closes the socket.
pub struct Connection {
    pub sender: SendRequest<Body>,
    driver: JoinHandle<()>,
}

impl Connection {
    pub async fn open(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            // Its errors reach the caller through the request or the body.
            let _ = connection.await;
        });
        Ok(Self { sender, driver })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

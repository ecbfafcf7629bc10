//! A TCP proxy between the relay and a real broker, which a test can cut: every connection
//! through it is closed and new ones are refused (its port is closed) until it is restored,
//! as when the network to the broker fails.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// A proxy from a local port to `upstream`.
pub struct Proxy {
    /// Where it listens; the same port again after a restore.
    pub addr: SocketAddr,
    /// Where it forwards to.
    upstream: SocketAddr,
    /// While up: cancels the accept loop, and the task that runs it (and owns every connection).
    up: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Proxy {
    /// Starts forwarding a free port on 127.0.0.1 to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = listen("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().expect("proxy address");
        let mut proxy = Proxy {
            addr,
            upstream,
            up: None,
        };
        proxy.serve(listener);
        proxy
    }

    /// Closes every connection and the listening port; returns once both are closed.
    pub async fn cut(&mut self) {
        if let Some((stop, task)) = self.up.take() {
            stop.cancel();
            task.await.expect("proxy task");
        }
    }

    /// Listens on the same port again and forwards new connections.
    pub fn restore(&mut self) {
        if self.up.is_none() {
            self.serve(listen(self.addr));
        }
    }

    /// Runs the accept loop on `listener` until cut.
    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let upstream = self.upstream;
        let task = tokio::spawn(accept(listener, upstream, stop.clone()));
        self.up = Some((stop, task));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.up.take() {
            stop.cancel();
        }
    }
}

/// Binds `addr` with SO_REUSEADDR, so the port can be bound again right after a cut although
/// the closed connections linger in TIME_WAIT.
fn listen(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind proxy port");
    socket.listen(128).expect("listen")
}

/// Accepts and pipes connections until `stop`; then drops the listener and aborts every
/// connection (closing both of its sockets) before returning.
async fn accept(listener: TcpListener, upstream: SocketAddr, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    connections.spawn(pipe(client, upstream));
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Copies bytes both ways between `client` and a new connection to `upstream` until either
/// side closes.
async fn pipe(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

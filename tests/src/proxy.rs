//! A TCP fault proxy for the end-to-end tests: sits between a sled and its gateway and passes, black-holes,
//! delays or throttles the bytes, or resets every connection at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does to the bytes of every connection, in both directions, from now on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Deliver everything at once.
    Pass,
    /// Keep both TCP connections open but deliver nothing (the half-open case): bytes are read and dropped.
    BlackHole,
    /// Deliver each chunk this long after it arrived, in order.
    Delay(Duration),
    /// Deliver at most this many bytes per second in each direction.
    Throttle(u64),
    /// Stop reading, as a hung peer does: bytes wait in the socket buffers until they are full, and then the
    /// sender's writes are no longer taken.
    Stall,
}

/// A running proxy. Dropping it stops accepting; open connections end when their peers close them.
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    cut: watch::Sender<u64>,
    upstream: Arc<Mutex<SocketAddr>>,
    accepted: Arc<Mutex<Vec<Instant>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, _) = watch::channel(Fault::Pass);
        let (cut, _) = watch::channel(0u64);
        let upstream = Arc::new(Mutex::new(upstream));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let accept_task = tokio::spawn({
            let (fault, cut, upstream, accepted) = (fault.clone(), cut.clone(), upstream.clone(), accepted.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    accepted.lock().unwrap().push(Instant::now());
                    let to = *upstream.lock().unwrap();
                    let (fault, cut) = (fault.subscribe(), cut.subscribe());
                    tokio::spawn(async move {
                        // An upstream that is down: the client sees its connection reset.
                        let Ok(server) = TcpStream::connect(to).await else {
                            let _ = client.set_zero_linger();
                            return;
                        };
                        let _ = (client.set_nodelay(true), server.set_nodelay(true));
                        let (client_rx, client_tx) = client.into_split();
                        let (server_rx, server_tx) = server.into_split();
                        tokio::spawn(pump(client_rx, server_tx, fault.clone(), cut.clone()));
                        tokio::spawn(pump(server_rx, client_tx, fault, cut));
                    });
                }
            }
        });
        FaultProxy { addr, fault, cut, upstream, accepted, accept_task }
    }

    /// Changes what happens to the bytes of every connection, open or future.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Resets every open connection (both ends see a TCP reset); later connections are unaffected.
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Sends later connections to another upstream (a restarted gateway on a new port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// When each connection was accepted, in order.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut();
    }
}

/// Copies `from` to `to` under the current fault, until either side ends or the proxy cuts.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    mut cut: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let cut_now = async |cut: &mut watch::Receiver<u64>| {
        let _ = cut.changed().await;
    };
    loop {
        while *fault.borrow_and_update() == Fault::Stall {
            tokio::select! {
                _ = fault.changed() => {}
                () = cut_now(&mut cut) => return reset(to),
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = cut_now(&mut cut) => return reset(to),
        };
        let now = *fault.borrow();
        let delivered = async {
            match now {
                // A chunk read just before a stall is still delivered: a hung peer loses nothing.
                Fault::Pass | Fault::Stall => to.write_all(&buf[..n]).await.is_ok(),
                Fault::BlackHole => true,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    to.write_all(&buf[..n]).await.is_ok()
                }
                Fault::Throttle(bytes_per_sec) => {
                    // Slices of a hundredth of a second's worth, each followed by its share of the second.
                    let slice = usize::try_from(bytes_per_sec / 100).unwrap_or(usize::MAX).max(1);
                    for part in buf[..n].chunks(slice) {
                        if to.write_all(part).await.is_err() {
                            return false;
                        }
                        tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / bytes_per_sec as f64)).await;
                    }
                    true
                }
            }
        };
        tokio::select! {
            ok = delivered => if !ok { break },
            () = cut_now(&mut cut) => return reset(to),
        }
    }
    let _ = to.shutdown().await;
}

/// Drops the write half with a zero linger: the peer sees a reset, not an orderly close.
fn reset(to: OwnedWriteHalf) {
    let _ = to.as_ref().set_zero_linger();
}

//! An in-process echo upstream for the proxy-mode tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An echo server on 127.0.0.1:0 that counts the connections it accepted. Dropping it (or
/// calling `kill`) closes the listener and every connection.
pub struct Echo {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        Echo::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Echo {
        let listener = TcpListener::bind(addr).await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Echo {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

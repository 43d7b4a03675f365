//! A second, independent load generator for `scripts/bench.sh`: closed loop, one request
//! outstanding per connection, on ONE thread (a current-thread runtime), counting replies
//! and nothing else — no histogram, no progress, no allocation per request.
//!
//! Its point is to cross-check `elastic-lb load`: it uses at most one core, so on a 2-core
//! machine the server under test always has the other, and the bench reports how busy each
//! generator was (a saturated generator compresses every server ratio towards 1).
//!
//! ```text
//! cargo run --release --example pingpong -- ADDR CONNECTIONS SECONDS
//! ```
//! Prints `{"requests": N, "seconds": S, "requests_per_s": R}`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"SMALL x\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let connections: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let (requests, elapsed) = runtime.block_on(run(&addr, connections, seconds));
    println!(
        "{{\"requests\": {requests}, \"seconds\": {:.3}, \"requests_per_s\": {:.1}}}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
}

async fn run(addr: &str, connections: usize, seconds: u64) -> (u64, Duration) {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let s = TcpStream::connect(addr)
            .await
            .expect("connect to the target");
        s.set_nodelay(true).expect("nodelay");
        streams.push(s);
    }
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(client(s, deadline)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client task");
    }
    (total, start.elapsed())
}

/// Sends one request, reads until its `\n`, repeats until `deadline`; returns the count.
async fn client(mut s: TcpStream, deadline: tokio::time::Instant) -> u64 {
    let mut buf = [0u8; 512];
    let mut done = 0;
    while tokio::time::Instant::now() < deadline {
        if s.write_all(REQUEST).await.is_err() {
            break;
        }
        // Replies are short and one is outstanding: read until the line is complete.
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return done,
                Ok(n) if buf[..n].contains(&b'\n') => break,
                Ok(_) => {}
            }
        }
        done += 1;
    }
    done
}

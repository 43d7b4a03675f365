//! Scale-up reaction time: from the connect of the connection that pushes the average load
//! past `scale_up_threshold` to the new machine being listed as active.
//!
//! Each trial starts an in-process [`Server`] (one medium machine, capacity 100, fixed
//! reservation 10, instant service, admin off), admits five connections (average 50 %, not
//! above the 50 % threshold), then starts the clock, connects a sixth (60 %) and waits on the
//! `stats().topology` watch channel until a second machine appears. Prints one line per
//! statistic; `--json` prints one JSON object.
//!
//! ```text
//! cargo run --release --example scale_reaction -- [TRIALS] [--json]
//! ```

use std::time::Duration;

use elastic_lb::config::{AdminAddress, Config};
use elastic_lb::Server;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let trials: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(30)
        .max(1);
    let mut times = Vec::with_capacity(trials);
    for _ in 0..trials {
        match trial().await {
            Ok(t) => times.push(t),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (p50, p90, max) = (us(at(0.5)), us(at(0.9)), us(at(1.0)));
    if json {
        println!(
            "{{\"trials\":{trials},\"p50_us\":{p50:.0},\"p90_us\":{p90:.0},\"max_us\":{max:.0}}}"
        );
    } else {
        println!("scale-up reaction over {trials} trials: p50 {p50:.0} µs, p90 {p90:.0} µs, max {max:.0} µs");
    }
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.admin.address = AdminAddress::Off;
    cfg.dispatcher.seed = 1;
    cfg.load.connection_min = 10.0;
    cfg.load.connection_max = 10.0;
    cfg.load.requests.service_ms_per_unit = 0.0;
    cfg
}

async fn admitted(addr: std::net::SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    conn.get_mut()
        .write_all(b"PING\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    timeout(LIMIT, conn.read_line(&mut line))
        .await
        .map_err(|_| "no PONG".to_string())?
        .map_err(|e| e.to_string())?;
    if line != "PONG\n" {
        return Err(format!("expected PONG, got {line:?}"));
    }
    Ok(conn)
}

async fn trial() -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let server = Server::start(config(), listener, None)
        .await
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(admitted(addr).await?);
    }
    let mut topology = server.stats().topology.clone();
    if topology.borrow_and_update().machines.len() != 1 {
        return Err("expected one machine before the push".to_string());
    }
    let started = Instant::now();
    let connect = tokio::spawn(async move { admitted(addr).await });
    let scaled = timeout(LIMIT, topology.wait_for(|t| t.machines.len() >= 2)).await;
    let elapsed = started.elapsed();
    if !matches!(scaled, Ok(Ok(_))) {
        return Err("no scale-up within 5 s".to_string());
    }
    held.push(connect.await.map_err(|e| e.to_string())??);
    drop(held);
    server.shutdown(Duration::from_secs(1)).await;
    Ok(elapsed)
}

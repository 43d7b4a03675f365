//! `backend.send_proxy` over real sockets: a test upstream parses the PROXY header (v1 and
//! v2) the balancer writes before the client's first byte, then echoes the rest.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fixed_reservation, start_lb, within};
use elastic_lb::config::{BackendMode, Config, SendProxy, UpstreamConfig};
use elastic_lb::core::Size;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the upstream parsed from one connection's header: (source, destination).
type Parsed = (SocketAddr, SocketAddr);

/// Parses a v1 header line.
fn parse_v1(line: &str) -> Option<Parsed> {
    let line = line.strip_suffix("\r\n")?;
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 6 || parts[0] != "PROXY" || !matches!(parts[1], "TCP4" | "TCP6") {
        return None;
    }
    let src: IpAddr = parts[2].parse().ok()?;
    let dst: IpAddr = parts[3].parse().ok()?;
    let sport: u16 = parts[4].parse().ok()?;
    let dport: u16 = parts[5].parse().ok()?;
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

/// Parses a v2 header's fixed part (16 bytes) and address block.
fn parse_v2(head: &[u8; 16], block: &[u8]) -> Option<Parsed> {
    const SIG: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    if head[..12] != SIG || head[12] != 0x21 {
        return None;
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] {
        0x11 if block.len() >= 12 => {
            let src = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let dst = Ipv4Addr::new(block[4], block[5], block[6], block[7]);
            Some((
                SocketAddr::new(src.into(), port(&block[8..])),
                SocketAddr::new(dst.into(), port(&block[10..])),
            ))
        }
        0x21 if block.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                Ipv6Addr::from(o)
            };
            Some((
                SocketAddr::new(ip(&block[..16]).into(), port(&block[32..])),
                SocketAddr::new(ip(&block[16..32]).into(), port(&block[34..])),
            ))
        }
        _ => None,
    }
}

/// An upstream that expects a PROXY header on every connection that sends bytes, reports
/// what it parsed, then echoes the rest. Health probes send nothing (`send_proxy = off`)
/// or a LOCAL header (v1 `PROXY UNKNOWN`, v2 command LOCAL), which is counted in `probes`.
async fn proxy_upstream() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Option<Parsed>>,
    Arc<AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).await.is_err() {
                    return; // a health probe
                }
                let parsed = if first[0] == b'P' {
                    let mut line = String::from("P");
                    if s.read_line(&mut line).await.is_err() {
                        return;
                    }
                    if line == "PROXY UNKNOWN\r\n" {
                        counted.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    parse_v1(&line)
                } else {
                    let mut head = [0u8; 16];
                    head[0] = first[0];
                    if s.read_exact(&mut head[1..]).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                    if head[12] == 0x20 && head[13] == 0 && len == 0 {
                        counted.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let mut block = vec![0u8; len];
                    if s.read_exact(&mut block).await.is_err() {
                        return;
                    }
                    parse_v2(&head, &block)
                };
                let _ = tx.send(parsed);
                let mut rest = Vec::new();
                rest.extend_from_slice(s.buffer());
                let mut s = s.into_inner();
                if s.write_all(&rest).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx, probes)
}

fn config(upstream: SocketAddr, send_proxy: SendProxy) -> Config {
    let mut cfg = fixed_reservation(10.0);
    cfg.backend.mode = BackendMode::Proxy;
    cfg.backend.health_check_interval = Duration::from_millis(50);
    cfg.backend.send_proxy = send_proxy;
    cfg.backend.upstreams = vec![UpstreamConfig {
        address: upstream,
        size: Size::Medium,
        max_connections: None,
    }];
    cfg
}

async fn header_carries_client_address(version: SendProxy) {
    let (upstream, mut parsed, probes) = proxy_upstream().await;
    let lb = start_lb(config(upstream, version)).await;
    for _ in 0..2 {
        let mut c = TcpStream::connect(lb.addr).await.expect("connect");
        let client = c.local_addr().expect("client addr");
        let data = b"hello through the proxy\n";
        c.write_all(data).await.expect("write");
        let mut back = vec![0; data.len()];
        within("echo", c.read_exact(&mut back)).await.expect("read");
        assert_eq!(back, data, "the header is not echoed to the client");
        let got = within("header", parsed.recv())
            .await
            .expect("upstream running")
            .expect("a well-formed PROXY header");
        assert_eq!(
            got,
            (client, lb.addr),
            "source = client, destination = balancer"
        );
    }
    // Health probes (every 50 ms) announce themselves as LOCAL, as HAProxy's checks of a
    // `send-proxy` server do.
    common::wait_until(Duration::from_secs(5), "a LOCAL probe header", || {
        probes.load(Ordering::SeqCst) >= 2
    })
    .await;
}

#[tokio::test]
async fn send_proxy_v1_header_carries_the_client_address() {
    header_carries_client_address(SendProxy::V1).await;
}

#[tokio::test]
async fn send_proxy_v2_header_carries_the_client_address() {
    header_carries_client_address(SendProxy::V2).await;
}

#[tokio::test]
async fn send_proxy_off_adds_no_bytes() {
    let (upstream, mut parsed, probes) = proxy_upstream().await;
    let lb = start_lb(config(upstream, SendProxy::Off)).await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    c.write_all(b"PING\n").await.expect("write");
    let got = within("first bytes", parsed.recv()).await.expect("running");
    assert_eq!(got, None, "the client's own bytes arrive first, no header");
    assert_eq!(probes.load(Ordering::SeqCst), 0, "probes send nothing");
}

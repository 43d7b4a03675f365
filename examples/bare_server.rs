//! The benchmark ceiling: the line protocol of SPEC §4 with no balancing at all.
//!
//! One tokio task per connection, buffered line reading and writing, every request answered
//! on the spot as machine `m1` (no dispatcher, no machine queue, no accounting). Whatever
//! elastic-lb costs on top of this is the price of balancing. `scripts/bench.sh` runs both.
//!
//! ```text
//! cargo run --release --example bare_server -- 127.0.0.1:7080
//! ```

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7080".to_string());
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("bare_server listening on {addr}");
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                tokio::spawn(serve(socket, peer));
            }
            // EMFILE and friends: wait a moment instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

async fn serve(socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let (read_half, write_half) = socket.into_split();
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(write_half);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let quit = reply(&line, peer, &mut writer).await.is_err();
        if quit {
            break;
        }
        // Flush once nothing more is buffered, so pipelined requests share one write.
        if reader.buffer().is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
}

/// Writes the reply to one line. `Err(())` means close the connection (QUIT or a write
/// error).
async fn reply<W: AsyncWriteExt + Unpin>(
    raw: &[u8],
    peer: SocketAddr,
    out: &mut W,
) -> Result<(), ()> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.is_empty() {
        return Ok(());
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return write(out, b"ERR bad-request line is not valid UTF-8\n").await;
    };
    let trimmed = text.trim_matches(' ');
    if trimmed.eq_ignore_ascii_case("PING") {
        return write(out, b"PONG\n").await;
    }
    if trimmed.eq_ignore_ascii_case("INFO") {
        let info =
            format!("OK machine=m1 size=medium load=0.00 connection={peer} reservation=0.00\n");
        return write(out, info.as_bytes()).await;
    }
    if trimmed.eq_ignore_ascii_case("STATS") {
        return write(out, b"[0.00%]\n").await;
    }
    if trimmed.eq_ignore_ascii_case("QUIT") {
        let _ = write(out, b"BYE\n").await;
        return Err(());
    }
    let (first, rest) = match trimmed.split_once(' ') {
        Some((first, rest)) => (first, rest.trim_start_matches(' ')),
        None => (trimmed, ""),
    };
    let (class, payload) = match ["small", "medium", "large"]
        .into_iter()
        .find(|c| c.eq_ignore_ascii_case(first))
    {
        Some(class) => (class, rest),
        None => ("small", text),
    };
    write(out, b"OK m1 ").await?;
    write(out, class.as_bytes()).await?;
    if !payload.is_empty() {
        write(out, b" ").await?;
        write(out, payload.as_bytes()).await?;
    }
    write(out, b"\n").await
}

async fn write<W: AsyncWriteExt + Unpin>(out: &mut W, bytes: &[u8]) -> Result<(), ()> {
    out.write_all(bytes).await.map_err(|_| ())
}

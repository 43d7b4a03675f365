//! The benchmark ceiling: the line protocol of SPEC §4 with no balancing at all.
//!
//! One tokio task per connection. It waits for the socket to be readable, then reads whatever
//! is there (up to 64 KiB; a short read counts as drained) into its worker thread's scratch
//! buffer, answers every complete line on the spot as machine `m1` (no dispatcher, no
//! machine queue, no accounting, no allocation per request), and sends all the replies to
//! one read in one write. An idle
//! connection holds no buffer at all (as nginx and HAProxy release theirs), only a partial
//! line when one is pending. Whatever elastic-lb costs on top of this — in throughput,
//! latency and memory — is the price of balancing. `scripts/bench.sh` runs both.
//!
//! ```text
//! cargo run --release --example bare_server -- 127.0.0.1:7080
//! ```

use std::cell::RefCell;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

/// Bytes read at most per read call, and the longest line kept.
const READ_CHUNK: usize = 64 * 1024;

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

thread_local! {
    /// The read buffer, one per worker thread: a task reads into it and consumes it
    /// without awaiting in between, so no connection owns a buffer while it waits.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// What one readable wake-up led to.
enum Step {
    /// Replies (maybe none) are in `output`; keep serving.
    Continue,
    /// The client closed, an error occurred, or it sent QUIT (its reply is in `output`).
    Close,
}

async fn serve(socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    // The unfinished line carried from one read to the next (usually empty).
    let mut partial: Vec<u8> = Vec::new();
    let mut output: Vec<u8> = Vec::new();
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let step = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            match read_drained(&socket, &mut buf) {
                Ok(0) => Step::Close,
                Ok(n) => answer(&buf[..n], &mut partial, peer, &mut output),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::Continue,
                Err(_) => Step::Close,
            }
        });
        if !output.is_empty() {
            if write_all(&socket, &output).await.is_err() {
                return;
            }
            output.clear();
            if output.capacity() > READ_CHUNK {
                output = Vec::new(); // a pipelining burst is over: give the memory back
            }
        }
        if matches!(step, Step::Close) {
            return;
        }
    }
}

/// `try_read`, except that a short read (fewer bytes than `buf` holds) also clears the
/// socket's readiness: the socket is drained, and the next wait does not first try a read
/// that can only return `EAGAIN` (HAProxy does the same). tokio clears readiness only if no
/// event came since it was observed, and never clears read-closed, so nothing is missed.
/// elastic-lb reads the same way (`src/server/session/input.rs`).
fn read_drained(socket: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    let result = socket.try_io(Interest::READABLE, || {
        got = socket.try_read(buf)?;
        if got > 0 && got < buf.len() {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    match result {
        Err(_) if got > 0 => Ok(got),
        other => other,
    }
}

/// Answers every complete line of `partial` + `data`, keeping the unfinished tail.
fn answer(data: &[u8], partial: &mut Vec<u8>, peer: SocketAddr, output: &mut Vec<u8>) -> Step {
    let joined;
    let input: &[u8] = if partial.is_empty() {
        data
    } else {
        partial.extend_from_slice(data);
        joined = std::mem::take(partial);
        &joined
    };
    let mut consumed = 0;
    while let Some(end) = input[consumed..].iter().position(|&b| b == b'\n') {
        let line = &input[consumed..consumed + end];
        consumed += end + 1;
        if !reply(line, peer, output) {
            return Step::Close;
        }
    }
    let tail = &input[consumed..];
    // An over-long line is dropped (the balancer answers too-long and closes instead).
    if tail.len() <= READ_CHUNK {
        partial.extend_from_slice(tail);
    }
    Step::Continue
}

/// Writes all of `bytes`, waiting for writability when the socket buffer is full.
async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends the reply to one line to `out`; false means close the connection (QUIT).
fn reply(raw: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> bool {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.is_empty() {
        return true;
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        out.extend_from_slice(b"ERR bad-request line is not valid UTF-8\n");
        return true;
    };
    let trimmed = text.trim_matches(' ');
    if trimmed.eq_ignore_ascii_case("PING") {
        out.extend_from_slice(b"PONG\n");
        return true;
    }
    if trimmed.eq_ignore_ascii_case("INFO") {
        let info =
            format!("OK machine=m1 size=medium load=0.00 connection={peer} reservation=0.00\n");
        out.extend_from_slice(info.as_bytes());
        return true;
    }
    if trimmed.eq_ignore_ascii_case("STATS") {
        out.extend_from_slice(b"[0.00%]\n");
        return true;
    }
    if trimmed.eq_ignore_ascii_case("QUIT") {
        out.extend_from_slice(b"BYE\n");
        return false;
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
    out.extend_from_slice(b"OK m1 ");
    out.extend_from_slice(class.as_bytes());
    if !payload.is_empty() {
        out.push(b' ');
        out.extend_from_slice(payload.as_bytes());
    }
    out.push(b'\n');
    true
}

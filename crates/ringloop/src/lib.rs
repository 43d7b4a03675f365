//! ringloop: one io_uring per thread, and an executor that waits on it.
//!
//! elastic-lb's proxy mode spends most of its time in the kernel moving a few bytes per
//! request between two sockets. With readiness-based I/O (epoll) each request costs an
//! `epoll_wait` share, a `recv` and a `send` per side, and a wake-up through the epoll
//! callback chain. With io_uring the thread submits every queued operation and collects
//! every completion in one `io_uring_enter`, and a `recv` armed before the bytes arrive is
//! performed as soon as they do. `benches/ceiling` measures the difference on the host.
//!
//! This crate is the small runtime that puts that under async code:
//!
//! - [`Runtime`]: one per thread. [`Runtime::block_on`] runs a future and everything
//!   [`spawn`]ed onto the thread, and waits in `io_uring_enter` when nothing is ready.
//!   Wakers work from any thread: a wake-up from elsewhere goes through an `eventfd` the
//!   ring is reading, so `tokio::sync` channels and timers of a tokio runtime (entered with
//!   `Handle::enter`) wake tasks here.
//! - [`TcpListener`], [`TcpStream`]: accept, connect, `recv` and `send` as futures over
//!   owned buffers. A future dropped before its operation completed cancels it, and the
//!   buffer stays alive until the kernel is done with it.
//!
//! The unsafe code is confined to `op` (handing entries that point at owned memory to
//! the kernel) and `net` (plain system calls on descriptors this crate owns, and
//! [`unacked_bytes`], one `ioctl` on a descriptor its caller owns).
#![deny(unsafe_op_in_unsafe_fn, missing_docs, rust_2018_idioms)]

mod net;
mod op;
mod pool;
mod runtime;

pub use net::{unacked_bytes, IoBuf, TcpListener, TcpStream};
pub use pool::PooledBuf;
pub use runtime::{available, spawn, Runtime};

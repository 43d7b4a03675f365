//! Provided buffers: a runtime's pool of receive buffers that the kernel picks from when
//! bytes arrive (`IORING_REGISTER_PBUF_RING`, buffer group 0).
//!
//! A `recv` armed with a buffer of its own pins that buffer for as long as the peer is
//! silent, so a thousand idle connections pin a thousand buffers. A `recv` that selects
//! from the pool takes a buffer only when bytes are there, and the [`PooledBuf`] goes back
//! to the pool when dropped — a connection owns a buffer only while its bytes are in it.

use std::cell::{Cell, RefCell};
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Waker;

use io_uring::{types, IoUring};

/// The buffer group every pooled `recv` selects from.
pub(crate) const GROUP: u16 = 0;

/// The pool: `count` buffers of `size` bytes, and the ring of free ones shared with the
/// kernel.
pub(crate) struct Pool {
    /// `count * size` bytes (`mmap`), written by the kernel into buffers it picked.
    memory: NonNull<u8>,
    memory_bytes: usize,
    /// `count` entries, page-aligned (`mmap`), read by the kernel.
    entries: NonNull<types::BufRingEntry>,
    entries_bytes: usize,
    count: u16,
    size: usize,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: Cell<u16>,
    /// Buffers out of the pool (picked by the kernel, not yet given back).
    out: Cell<usize>,
    /// Tasks waiting for a buffer after a `recv` found none (`ENOBUFS`).
    waiting: RefCell<Vec<Waker>>,
}

impl Pool {
    /// Registers `count` (a power of two, at most 32768) buffers of `size` bytes with `ring`.
    pub(crate) fn new(ring: &IoUring, count: u16, size: usize) -> io::Result<Pool> {
        if !count.is_power_of_two() || count > 1 << 15 || size == 0 || size > u32::MAX as usize {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let entries_bytes = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let entries = map(entries_bytes)?.cast::<types::BufRingEntry>();
        let memory_bytes = usize::from(count) * size;
        let memory = match map(memory_bytes) {
            Ok(memory) => memory,
            Err(e) => {
                // SAFETY: the mapping just made, unmapped once.
                unsafe { libc::munmap(entries.as_ptr().cast(), entries_bytes) };
                return Err(e);
            }
        };
        let pool = Pool {
            memory,
            memory_bytes,
            entries,
            entries_bytes,
            count,
            size,
            tail: Cell::new(0),
            out: Cell::new(usize::from(count)),
            waiting: RefCell::new(Vec::new()),
        };
        // SAFETY: the entries stay mapped until the pool is dropped, which happens after the
        // ring is (the runtime's core drops its ring first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                GROUP,
                0,
            )?;
        }
        for id in 0..count {
            pool.put(id);
        }
        Ok(pool)
    }

    /// Puts buffer `id` back in the ring of free buffers.
    fn put(&self, id: u16) {
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.count - 1));
        // SAFETY: `slot` < `count` entries of the mapping; the kernel reads an entry only
        // once the tail, published below, covers it.
        unsafe {
            let entry = &mut *self.entries.as_ptr().add(slot);
            entry.set_addr(self.memory.as_ptr().add(usize::from(id) * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(id);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field shares the first entry's `resv` field (the ring's layout).
        let shared =
            unsafe { &*types::BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        shared.store(tail, Ordering::Release);
        self.out.set(self.out.get().saturating_sub(1));
    }

    /// Buffer `id` with its first `len` bytes, just picked by the kernel.
    pub(crate) fn take(self: &Rc<Pool>, id: u16, len: usize) -> PooledBuf {
        self.out.set(self.out.get() + 1);
        PooledBuf {
            pool: self.clone(),
            id,
            len: len.min(self.size),
        }
    }

    /// Gives buffer `id` back (a completion nobody takes) and wakes a waiting task.
    pub(crate) fn give_back(&self, id: u16) {
        self.out.set(self.out.get() + 1);
        self.release(id);
    }

    fn release(&self, id: u16) {
        self.put(id);
        // Every waiter, not one: a waiter whose receive was dropped since (a timeout) would
        // swallow a single wake-up while a live one slept on. Those that find no buffer
        // again wait again; running out of buffers is rare.
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for waiter in waiting {
            waiter.wake();
        }
    }

    /// Registers `waker` to be woken when a buffer comes back; `false` when one is free now.
    pub(crate) fn wait(&self, waker: &Waker) -> bool {
        if self.out.get() < usize::from(self.count) {
            return false;
        }
        self.waiting.borrow_mut().push(waker.clone());
        true
    }
}

/// `bytes` of anonymous, private, zeroed memory.
fn map(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping; the result is checked.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(mapped.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the mappings made in `new`, unmapped once (the ring, which used them, is
        // gone).
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.entries_bytes);
            libc::munmap(self.memory.as_ptr().cast(), self.memory_bytes);
        }
    }
}

/// Bytes received into a pooled buffer; the buffer goes back to the pool on drop.
pub struct PooledBuf {
    pool: Rc<Pool>,
    id: u16,
    len: usize,
}

impl PooledBuf {
    /// The same buffer holding its first `len` bytes.
    pub(crate) fn with_len(mut self, len: usize) -> PooledBuf {
        self.len = len.min(self.pool.size);
        self
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let start = usize::from(self.id) * self.pool.size;
        // SAFETY: this buffer is out of the ring (the kernel picked it and wrote `len`
        // bytes, then completed): nothing writes to it until it is dropped.
        unsafe { std::slice::from_raw_parts(self.pool.memory.as_ptr().add(start), self.len) }
    }
}

impl std::fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuf")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

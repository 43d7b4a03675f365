//! The executor: tasks, wakers, the ring and the loop that waits on it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use io_uring::{opcode, types, IoUring};
use slab::Slab;

use crate::op::{Abandoned, Completed, Slots};
use crate::pool::Pool;

/// `user_data` of the `eventfd` read that carries wake-ups from other threads.
pub(crate) const REMOTE_WAKE: u64 = u64::MAX;
/// `user_data` of entries whose completion nobody waits for (cancellations, closes).
pub(crate) const IGNORED: u64 = u64::MAX - 1;
/// The task id of [`Runtime::block_on`]'s own future.
const MAIN: usize = usize::MAX;
/// Tasks polled between two looks at the ring while tasks keep being ready.
const BUDGET: usize = 128;

static NEXT_RUNTIME: AtomicUsize = AtomicUsize::new(1);

/// The remote part of every runtime, for an operation dropped where its runtime does not
/// run (see [`drop_elsewhere`]); looked at only then.
static REMOTES: Mutex<Vec<Weak<Remote>>> = Mutex::new(Vec::new());

thread_local! {
    /// The runtime whose `block_on` runs on this thread, if any.
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    /// Its id (0: none), for wakers to tell a local wake-up from a remote one cheaply.
    static RUNNING: Cell<usize> = const { Cell::new(0) };
    /// Tasks woken on this thread, to poll: those of the runtime running here (each
    /// runtime keeps its own while another runs, see [`Entered`]).
    static READY: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
}

/// Whether this kernel lets this process use io_uring as [`Runtime`] does (Linux 6.1 or
/// later, not disabled by `kernel.io_uring_disabled` or a seccomp filter).
pub fn available() -> bool {
    build_ring(8).is_ok()
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(entries.saturating_mul(4))
        .build(entries)
}

/// What the runtime's thread shares with wakers on other threads.
struct Remote {
    runtime: usize,
    /// Tasks woken from other threads since the loop last looked.
    woken: Mutex<Vec<usize>>,
    /// An `eventfd` write is pending (the loop has not yet taken `woken`).
    signaled: AtomicBool,
    eventfd: OwnedFd,
    /// Operations dropped where this runtime does not run (key, and whether its result is
    /// a descriptor to close): cancelled by the loop when it next looks.
    dropped: Mutex<Vec<(usize, bool)>>,
}

impl Remote {
    fn wake(&self, task: usize) {
        self.woken
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(task);
        self.signal();
    }

    /// Makes the loop look at `woken` and `dropped`.
    fn signal(&self) {
        if !self.signaled.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd this struct owns. A
            // failure (the counter is saturated) still leaves the eventfd readable.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

struct TaskWaker {
    task: usize,
    remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if RUNNING.with(Cell::get) == self.remote.runtime {
            READY.with(|ready| ready.borrow_mut().push_back(self.task));
        } else {
            self.remote.wake(self.task);
        }
    }
}

struct Task {
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waker: Waker,
}

/// The state of one runtime, shared by its handle and the thread-local `CURRENT`.
pub(crate) struct Core {
    /// Declared first: dropped before the pool and the buffers it points at.
    pub(crate) ring: RefCell<IoUring>,
    /// Receive buffers the kernel picks from ([`Runtime::with_pool`]).
    pub(crate) pool: Option<Rc<Pool>>,
    pub(crate) slots: RefCell<Slots>,
    tasks: RefCell<Slab<Task>>,
    remote: Arc<Remote>,
    /// Where the kernel writes the eventfd's counter (heap memory, never moved).
    wake_buf: RefCell<Box<u64>>,
    /// The read of `remote.eventfd` is in flight.
    wake_armed: Cell<bool>,
    /// The runtime is being dropped: the read is not re-armed.
    closing: Cell<bool>,
    /// Tasks that ended in a panic.
    panics: Cell<u64>,
    completions: RefCell<Vec<(u64, i32, u32)>>,
    /// Cancellations the submission queue could not take when their operation was dropped;
    /// queued again before each wait.
    pending_cancels: RefCell<Vec<u64>>,
    /// Its tasks still ready when its `block_on` returned: `READY` is the thread's, and
    /// another runtime may run on this thread before this one runs again.
    parked: RefCell<VecDeque<usize>>,
}

impl Core {
    /// This runtime's id, unique in the process.
    pub(crate) fn id(&self) -> usize {
        self.remote.runtime
    }

    /// Queues `entry`; when the submission queue is full, submits it first.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its completion arrives.
    pub(crate) unsafe fn push(&self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: the caller's promise.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            ring.submit()?;
        }
    }

    /// Cancels the operation whose `user_data` is `key`. When the submission queue cannot
    /// take the cancellation now, it is queued again before the loop next waits: an
    /// operation nobody waits for must not keep its socket open.
    pub(crate) fn cancel(&self, key: u64) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(key))
            .build()
            .user_data(IGNORED);
        // SAFETY: a cancellation points at no memory.
        if unsafe { self.push(&cancel) }.is_err() {
            self.pending_cancels.borrow_mut().push(key);
        }
    }

    /// Cancels the operations dropped where this runtime did not run
    /// ([`drop_elsewhere`]): their data was leaked there, so their slots become orphans
    /// holding nothing; one already completed is freed (its descriptor closed, its buffer
    /// given back).
    fn reclaim_dropped(&self) {
        let dropped = std::mem::take(
            &mut *self
                .remote
                .dropped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for (key, closes_fd) in dropped {
            self.abandon(key, closes_fd, Box::new(()));
        }
    }

    /// Operation `key` of this runtime, whose `Op` is gone: cancelled if in flight (its
    /// slot keeping `data` until the completion), freed if completed (a picked pool buffer
    /// going back).
    pub(crate) fn abandon(&self, key: usize, closes_fd: bool, data: Box<dyn std::any::Any>) {
        let abandoned = self.slots.borrow_mut().abandon(key, closes_fd, data);
        match abandoned {
            Abandoned::Cancel => self.cancel(key as u64),
            Abandoned::Freed(Some(id)) => {
                if let Some(pool) = &self.pool {
                    pool.give_back(id);
                }
            }
            Abandoned::Freed(None) => {}
        }
    }

    /// Queues the cancellations that could not be queued before (see [`Core::cancel`]), of
    /// the operations still orphaned: one that completed meanwhile freed its key, which a
    /// new operation may hold now.
    fn retry_cancels(&self) {
        let keys = std::mem::take(&mut *self.pending_cancels.borrow_mut());
        for key in keys {
            if self.slots.borrow().is_orphan(key) {
                self.cancel(key);
            }
        }
    }

    fn arm_remote_wake(&self) -> io::Result<()> {
        let buf: *mut u64 = &mut **self.wake_buf.borrow_mut();
        let entry = opcode::Read::new(types::Fd(self.remote.eventfd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(REMOTE_WAKE);
        // SAFETY: `wake_buf` is a heap allocation owned by this core; `Runtime::drop`
        // waits for this read to complete before the core goes.
        unsafe { self.push(&entry) }?;
        self.wake_armed.set(true);
        Ok(())
    }
}

/// Hands operation `key` of runtime `runtime`, dropped where that runtime does not run
/// (another thread, or outside its `block_on`), to its loop to cancel. `false` when the
/// runtime is gone.
pub(crate) fn drop_elsewhere(runtime: usize, key: usize, closes_fd: bool) -> bool {
    let remote = REMOTES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .find(|remote| remote.runtime == runtime);
    let Some(remote) = remote else {
        return false;
    };
    remote
        .dropped
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((key, closes_fd));
    remote.signal();
    true
}

/// Runs `f` with the current thread's runtime core, if a runtime runs here.
pub(crate) fn with_core<R>(f: impl FnOnce(&Rc<Core>) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| current.borrow().as_ref().cloned())
        .ok()
        .flatten()
        .map(|core| f(&core))
}

/// Spawns `future` onto the runtime running on this thread. Returns it back when none does.
pub fn spawn<F: Future<Output = ()> + 'static>(future: F) -> Result<(), F> {
    let mut future = Some(future);
    let spawned = with_core(|core| {
        let mut tasks = core.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let id = entry.key();
        let waker = Waker::from(Arc::new(TaskWaker {
            task: id,
            remote: core.remote.clone(),
        }));
        if let Some(future) = future.take() {
            entry.insert(Task {
                future: Some(Box::pin(future)),
                waker,
            });
            READY.with(|ready| ready.borrow_mut().push_back(id));
        }
    });
    match (spawned, future) {
        (Some(()), None) => Ok(()),
        (_, Some(future)) => Err(future),
        (None, None) => Ok(()),
    }
}

/// One io_uring and the tasks that wait on it; one per thread.
pub struct Runtime {
    core: Rc<Core>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("id", &self.core.remote.runtime)
            .field("tasks", &self.core.tasks.borrow().len())
            .finish()
    }
}

impl Runtime {
    /// A runtime whose ring holds `entries` submissions (and four times as many
    /// completions).
    ///
    /// # Errors
    ///
    /// When io_uring is unavailable here (see [`available`]) or out of memory.
    pub fn new(entries: u32) -> io::Result<Runtime> {
        Runtime::build(entries, None)
    }

    /// As [`new`](Runtime::new), with a pool of `count` receive buffers of `size` bytes for
    /// [`TcpStream::recv_pooled`](crate::TcpStream::recv_pooled) (`count` a power of two,
    /// at most 32768).
    ///
    /// # Errors
    ///
    /// As `new`, and when the pool cannot be mapped or registered (Linux 5.19 or later).
    pub fn with_pool(entries: u32, count: u16, size: usize) -> io::Result<Runtime> {
        Runtime::build(entries, Some((count, size)))
    }

    fn build(entries: u32, pool: Option<(u16, usize)>) -> io::Result<Runtime> {
        let ring = build_ring(entries)?;
        let pool = match pool {
            Some((count, size)) => Some(Rc::new(Pool::new(&ring, count, size)?)),
            None => None,
        };
        // SAFETY: eventfd returns a new descriptor (or -1, checked) that we then own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let core = Rc::new(Core {
            ring: RefCell::new(ring),
            pool,
            slots: RefCell::new(Slots::default()),
            tasks: RefCell::new(Slab::new()),
            remote: Arc::new(Remote {
                runtime: NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed),
                woken: Mutex::new(Vec::new()),
                signaled: AtomicBool::new(false),
                eventfd,
                dropped: Mutex::new(Vec::new()),
            }),
            wake_buf: RefCell::new(Box::new(0)),
            wake_armed: Cell::new(false),
            closing: Cell::new(false),
            panics: Cell::new(0),
            completions: RefCell::new(Vec::with_capacity(256)),
            pending_cancels: RefCell::new(Vec::new()),
            parked: RefCell::new(VecDeque::new()),
        });
        core.arm_remote_wake()?;
        let mut remotes = REMOTES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        remotes.retain(|remote| remote.strong_count() > 0);
        remotes.push(Arc::downgrade(&core.remote));
        drop(remotes);
        Ok(Runtime { core })
    }

    /// Runs `future` to completion on this thread, with every task [`spawn`]ed meanwhile;
    /// waits in `io_uring_enter` whenever nothing is ready. Tasks still pending when it
    /// returns stay, and run again at the next `block_on`.
    ///
    /// # Errors
    ///
    /// When `io_uring_enter` fails for a reason other than an interruption.
    ///
    /// # Panics
    ///
    /// When called from inside another `block_on` on the same thread.
    pub fn block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        let _entered = Entered::new(&self.core);
        let mut future = pin!(future);
        let main_waker = Waker::from(Arc::new(TaskWaker {
            task: MAIN,
            remote: self.core.remote.clone(),
        }));
        let mut main_ready = true;
        loop {
            if main_ready {
                main_ready = false;
                let mut cx = Context::from_waker(&main_waker);
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    // What the last polls queued (a close, say) reaches the kernel now.
                    self.core.ring.borrow().submit()?;
                    return Ok(out);
                }
            }
            for _ in 0..BUDGET {
                let Some(id) = READY.with(|ready| ready.borrow_mut().pop_front()) else {
                    break;
                };
                if id == MAIN {
                    main_ready = true;
                } else {
                    self.poll_task(id);
                }
            }
            let idle = !main_ready && READY.with(|ready| ready.borrow().is_empty());
            self.turn(idle)?;
        }
    }

    /// Tasks that ended in a panic so far (each is dropped; the others go on).
    pub fn panics(&self) -> u64 {
        self.core.panics.get()
    }

    fn poll_task(&self, id: usize) {
        let taken = {
            let mut tasks = self.core.tasks.borrow_mut();
            tasks
                .get_mut(id)
                .and_then(|task| task.future.take().map(|f| (f, task.waker.clone())))
        };
        // Not there: a stale wake-up of a finished task, or one already being polled.
        let Some((mut future, waker)) = taken else {
            return;
        };
        let mut cx = Context::from_waker(&waker);
        // A task that panics ends there, as in tokio; the loop and the other tasks go on.
        let polled = panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        let done = !matches!(polled, Ok(Poll::Pending));
        if polled.is_err() {
            self.core.panics.set(self.core.panics.get() + 1);
        }
        let mut tasks = self.core.tasks.borrow_mut();
        if done {
            tasks.remove(id);
        } else if let Some(task) = tasks.get_mut(id) {
            task.future = Some(future);
        }
    }

    /// Submits what is queued, waits for a completion when `wait`, and wakes the owners of
    /// every completion.
    fn turn(&self, wait: bool) -> io::Result<()> {
        if !self.core.pending_cancels.borrow().is_empty() {
            self.core.retry_cancels();
        }
        // The read that carries wake-ups from other threads could not be queued last turn
        // (a full submission queue that would not submit): queue it now, and do not sleep
        // without it.
        let unarmed = !self.core.wake_armed.get()
            && !self.core.closing.get()
            && self.core.arm_remote_wake().is_err();
        let wait = wait && !unarmed;
        let submitted = self.core.ring.borrow().submit_and_wait(usize::from(wait));
        match submitted {
            Ok(_) => {}
            // Interrupted, completions to reap first (EBUSY), or the kernel short of memory
            // for now (EAGAIN, ENOMEM): what is queued stays queued and goes with the next
            // enter; the loop and its connections go on.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::ETIME | libc::EAGAIN | libc::ENOMEM)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut completions = self.core.completions.borrow_mut();
        completions.clear();
        completions.extend(
            self.core
                .ring
                .borrow_mut()
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for &(data, result, flags) in completions.iter() {
            match data {
                REMOTE_WAKE => {
                    self.core.wake_armed.set(false);
                    self.core.remote.signaled.store(false, Ordering::SeqCst);
                    let woken = std::mem::take(
                        &mut *self
                            .core
                            .remote
                            .woken
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    );
                    READY.with(|ready| ready.borrow_mut().extend(woken));
                    self.core.reclaim_dropped();
                    if !self.core.closing.get() {
                        // On failure, queued again at the next turn (above), before the
                        // loop would sleep: the other completions here are handled first.
                        let _ = self.core.arm_remote_wake();
                    }
                }
                IGNORED => {}
                key => {
                    let completed = self.core.slots.borrow_mut().complete(key, result, flags);
                    match completed {
                        Completed::Wake(Some(waker)) => waker.wake(),
                        Completed::Wake(None) | Completed::Orphaned(None) => {}
                        Completed::Orphaned(Some(id)) => {
                            if let Some(pool) = &self.core.pool {
                                pool.give_back(id);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _entered = Entered::new(&self.core);
        // Dropping the tasks drops their operations, which cancel themselves and leave
        // their memory to the slots until the kernel is done with it. Then the eventfd
        // read is cancelled too, and the ring goes only once nothing is in flight.
        let tasks: Vec<Task> = self.core.tasks.borrow_mut().drain().collect();
        drop(tasks);
        self.core.closing.set(true);
        let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(IGNORED);
        // SAFETY: a cancellation points at no memory.
        let mut cancelled = unsafe { self.core.push(&cancel_all) }.is_ok();
        let quiet = || self.core.slots.borrow().in_flight() == 0 && !self.core.wake_armed.get();
        for _ in 0..1000 {
            if quiet() {
                break;
            }
            if !cancelled {
                // The queue could not take it (full, and would not submit): again, and no
                // sleeping meanwhile — a receive from an idle peer would never complete.
                // SAFETY: as above.
                cancelled = unsafe { self.core.push(&cancel_all) }.is_ok();
            }
            if self.turn(cancelled).is_err() {
                break;
            }
        }
        READY.with(|ready| ready.borrow_mut().clear());
        if !quiet() {
            // The ring failed, or the kernel has not finished every operation: it may still
            // write into their buffers. Everything stays alive (ring, buffers, pool) for the
            // rest of the process rather than freeing memory the kernel could write to.
            std::mem::forget(Rc::clone(&self.core));
        }
    }
}

/// Makes a runtime the current one of this thread until dropped; its ready tasks move
/// into the thread's `READY` meanwhile, and back into the core after.
struct Entered(Rc<Core>);

impl Entered {
    fn new(core: &Rc<Core>) -> Entered {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            assert!(
                current.is_none(),
                "ringloop: a runtime already runs on this thread"
            );
            *current = Some(core.clone());
        });
        RUNNING.with(|running| running.set(core.remote.runtime));
        let parked = std::mem::take(&mut *core.parked.borrow_mut());
        READY.with(|ready| ready.borrow_mut().extend(parked));
        Entered(core.clone())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        RUNNING.with(|running| running.set(0));
        // What stays ready is this runtime's: kept for its next `block_on`, not left for
        // another runtime of this thread to pop (and lose).
        let _ = READY.try_with(|ready| {
            self.0
                .parked
                .borrow_mut()
                .extend(ready.borrow_mut().drain(..));
        });
        let _ = CURRENT.try_with(|current| current.borrow_mut().take());
    }
}

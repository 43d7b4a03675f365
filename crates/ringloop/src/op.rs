//! One io_uring operation as a future, and what keeps its memory alive.
//!
//! An operation's entry points at memory (a buffer, an address) that the kernel uses until
//! the operation completes. [`Op`] owns that memory (`data`) while it is in flight. When an
//! `Op` is dropped before its completion — a timeout fired, a `select!` took another branch —
//! its data moves into the slot and a cancellation is queued; the slot frees the data when
//! the completion (usually `-ECANCELED`) arrives. One dropped where its runtime does not
//! run (another thread, or outside `block_on`) leaks its data and has the runtime's loop
//! cancel it.

use std::any::Any;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, squeue};
use slab::Slab;

use crate::runtime::{drop_elsewhere, with_core};

/// What the kernel said when an operation completed.
#[derive(Debug)]
pub(crate) struct Completion<T> {
    /// The result: a count or a descriptor, or `-errno`.
    pub(crate) result: i32,
    /// The completion's flags (`IORING_CQE_F_BUFFER` and the buffer id, …).
    pub(crate) flags: u32,
    /// The operation's memory, back from the kernel.
    pub(crate) data: T,
}

impl<T> Completion<T> {
    /// The result as an `io::Result`.
    pub(crate) fn io(&self) -> io::Result<u32> {
        u32::try_from(self.result).map_err(|_| io::Error::from_raw_os_error(-self.result))
    }
}

enum Slot {
    /// In flight; the waker of the task awaiting it.
    Waiting(Option<Waker>),
    /// Completed, not yet seen by its `Op`: result and flags.
    Done(i32, u32),
    /// Its `Op` is gone: the data waits here for the completion. `closes_fd`: the result,
    /// if a descriptor, is closed (an accept completed as it was cancelled).
    Orphan {
        _data: Box<dyn Any>,
        closes_fd: bool,
    },
}

/// The operations of one runtime, by `user_data`.
#[derive(Default)]
pub(crate) struct Slots {
    slots: Slab<Slot>,
}

/// What an operation dropped where its runtime did not run calls for.
pub(crate) enum Abandoned {
    /// In flight: now an orphan; cancel it.
    Cancel,
    /// Completed meanwhile and freed; the buffer the kernel picked for it (if any) goes
    /// back.
    Freed(Option<u16>),
}

/// What a completion calls for.
pub(crate) enum Completed {
    /// Wake the task awaiting it (if it registered a waker).
    Wake(Option<Waker>),
    /// Its `Op` is gone; the buffer the kernel picked for it (if any) goes back.
    Orphaned(Option<u16>),
}

impl Slots {
    /// Records a completion.
    pub(crate) fn complete(&mut self, key: u64, result: i32, flags: u32) -> Completed {
        let Some(key) = usize::try_from(key).ok() else {
            return Completed::Wake(None);
        };
        match self.slots.get_mut(key) {
            Some(Slot::Waiting(waker)) => {
                let waker = waker.take();
                self.slots[key] = Slot::Done(result, flags);
                Completed::Wake(waker)
            }
            Some(Slot::Orphan { closes_fd, .. }) => {
                if *closes_fd && result >= 0 {
                    // SAFETY: the descriptor this operation created, which nobody else holds.
                    unsafe { libc::close(result) };
                }
                self.slots.remove(key);
                Completed::Orphaned(cqueue::buffer_select(flags))
            }
            Some(Slot::Done(..)) | None => Completed::Wake(None),
        }
    }

    /// Operation `key`, whose `Op` is gone: if in flight, an orphan keeping `data` (the
    /// memory the kernel may still use) until its completion; if completed, freed, its
    /// descriptor closed when `closes_fd`.
    pub(crate) fn abandon(&mut self, key: usize, closes_fd: bool, data: Box<dyn Any>) -> Abandoned {
        match self.slots.get(key) {
            Some(Slot::Waiting(_)) => {
                self.slots[key] = Slot::Orphan {
                    _data: data,
                    closes_fd,
                };
                Abandoned::Cancel
            }
            Some(Slot::Done(result, flags)) => {
                if closes_fd && *result >= 0 {
                    // SAFETY: the descriptor this operation created, which nobody else holds.
                    unsafe { libc::close(*result) };
                }
                let picked = cqueue::buffer_select(*flags);
                self.slots.remove(key);
                Abandoned::Freed(picked)
            }
            Some(Slot::Orphan { .. }) | None => Abandoned::Freed(None),
        }
    }

    /// Whether the operation `key` is in flight with its `Op` gone (a key freed since, and
    /// perhaps reused by a live operation, is not).
    pub(crate) fn is_orphan(&self, key: u64) -> bool {
        usize::try_from(key)
            .ok()
            .and_then(|key| self.slots.get(key))
            .is_some_and(|slot| matches!(slot, Slot::Orphan { .. }))
    }

    /// Operations not completed yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|(_, slot)| !matches!(slot, Slot::Done(..)))
            .count()
    }
}

/// An operation in flight, owning the memory its entry points at.
pub(crate) struct Op<T: 'static> {
    /// The runtime it was submitted on: its key means nothing in another's slots.
    runtime: usize,
    key: Option<usize>,
    data: Option<T>,
    closes_fd: bool,
}

impl<T: 'static> Op<T> {
    /// Queues `entry` (its `user_data` is set here) on the current thread's runtime.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must point into `data`'s heap memory (which does not move
    /// when `data` does), or to memory that outlives the operation.
    ///
    /// # Errors
    ///
    /// When no runtime runs on this thread, or the ring refuses the submission; `data`
    /// comes back.
    pub(crate) unsafe fn submit(entry: squeue::Entry, data: T) -> Result<Op<T>, (io::Error, T)> {
        let key = with_core(|core| {
            let key = core.slots.borrow_mut().slots.insert(Slot::Waiting(None));
            let entry = entry.user_data(key as u64);
            // SAFETY: the caller's promise; the slot keeps `data` alive if the `Op` goes.
            match unsafe { core.push(&entry) } {
                Ok(()) => Ok((core.id(), key)),
                Err(e) => {
                    core.slots.borrow_mut().slots.remove(key);
                    Err(e)
                }
            }
        })
        .unwrap_or_else(|| Err(io::Error::other("ringloop: no runtime on this thread")));
        match key {
            Ok((runtime, key)) => Ok(Op {
                runtime,
                key: Some(key),
                data: Some(data),
                closes_fd: false,
            }),
            Err(e) => Err((e, data)),
        }
    }

    /// Marks the operation as one whose result is a new descriptor (an accept), to be
    /// closed if the operation is dropped before its completion was seen.
    pub(crate) fn returns_fd(mut self) -> Self {
        self.closes_fd = true;
        self
    }
}

impl<T: 'static + Unpin> Future for Op<T> {
    type Output = Completion<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion<T>> {
        let Some(key) = self.key else {
            // Polled after completion: a contract violation of the caller; never again ready.
            return Poll::Pending;
        };
        let runtime = self.runtime;
        let done = with_core(|core| {
            assert_eq!(
                core.id(),
                runtime,
                "ringloop: an operation polled under a runtime other than its own"
            );
            let mut slots = core.slots.borrow_mut();
            match slots.slots.get_mut(key) {
                Some(Slot::Done(result, flags)) => {
                    let done = (*result, *flags);
                    slots.slots.remove(key);
                    Some(done)
                }
                Some(Slot::Waiting(waker)) => {
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                    None
                }
                _ => None,
            }
        })
        .flatten();
        match (done, self.data.take()) {
            (Some((result, flags)), Some(data)) => {
                self.key = None;
                Poll::Ready(Completion {
                    result,
                    flags,
                    data,
                })
            }
            (_, data) => {
                self.data = data;
                Poll::Pending
            }
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut data = self.data.take();
        let closes_fd = self.closes_fd;
        let runtime = self.runtime;
        let handled = with_core(|core| {
            if core.id() != runtime {
                // Not this runtime's operation: nothing here knows when the kernel is done.
                return false;
            }
            core.abandon(key, closes_fd, Box::new(data.take()));
            true
        });
        if handled != Some(true) {
            // Its runtime does not run here (another thread, outside its `block_on`, or
            // gone): the kernel may still write to the data, so it is leaked rather than
            // freed, and the runtime's loop cancels the operation when it next looks.
            std::mem::forget(data.take());
            drop_elsewhere(runtime, key, closes_fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_operation_whose_op_is_gone_is_an_orphan() {
        let mut slots = Slots::default();
        let waiting = slots.slots.insert(Slot::Waiting(None)) as u64;
        let orphan = slots.slots.insert(Slot::Orphan {
            _data: Box::new(()),
            closes_fd: false,
        }) as u64;
        assert!(!slots.is_orphan(waiting));
        assert!(slots.is_orphan(orphan));
        // Its completion frees the key; a new operation that takes it is not an orphan.
        assert!(matches!(
            slots.complete(orphan, 0, 0),
            Completed::Orphaned(None)
        ));
        assert!(!slots.is_orphan(orphan));
        let reused = slots.slots.insert(Slot::Waiting(None)) as u64;
        assert_eq!(reused, orphan);
        assert!(!slots.is_orphan(reused));
        assert!(!slots.is_orphan(u64::MAX));
    }

    #[test]
    fn an_operation_dropped_elsewhere_is_cancelled_if_in_flight_and_freed_if_done() {
        let mut slots = Slots::default();
        let waiting = slots.slots.insert(Slot::Waiting(None));
        assert!(matches!(
            slots.abandon(waiting, false, Box::new(())),
            Abandoned::Cancel
        ));
        assert!(slots.is_orphan(waiting as u64));
        // Its completion then frees it, as any orphan's does.
        assert!(matches!(
            slots.complete(waiting as u64, -libc::ECANCELED, 0),
            Completed::Orphaned(None)
        ));
        // Completed with buffer 7 of the pool, never seen: freed, and the buffer goes back.
        // IORING_CQE_F_BUFFER, and the id above IORING_CQE_BUFFER_SHIFT (16).
        let flags = 1 | (7 << 16);
        let done = slots.slots.insert(Slot::Done(5, flags));
        assert!(matches!(
            slots.abandon(done, false, Box::new(())),
            Abandoned::Freed(Some(7))
        ));
        assert_eq!(slots.in_flight(), 0);
        assert!(slots.slots.is_empty());
    }
}

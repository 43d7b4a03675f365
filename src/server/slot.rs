//! [`ConnectionSlot`]: one of `listener.max_connections`, held by a connection for its
//! whole life (also while it moves to another event loop) and released on drop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One of `max_connections`; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl ConnectionSlot {
    /// Takes a slot if fewer than `limit` are taken.
    pub fn try_take(open: &Arc<AtomicUsize>, limit: usize) -> Option<ConnectionSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnectionSlot { open: open.clone() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_respect_a_changing_limit() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = ConnectionSlot::try_take(&open, 2).unwrap();
        let _b = ConnectionSlot::try_take(&open, 2).unwrap();
        assert!(ConnectionSlot::try_take(&open, 2).is_none());
        // Lowered by a reload: nobody is cut off, but nobody new gets in.
        assert!(ConnectionSlot::try_take(&open, 1).is_none());
        drop(a);
        assert!(ConnectionSlot::try_take(&open, 1).is_none());
        assert!(ConnectionSlot::try_take(&open, 3).is_some());
    }
}

//! A connection's place: one of `listener.max_connections` while it is served
//! ([`ConnectionSlot`]), one of [`MAX_REFUSING`] while it is being refused. A refused
//! connection gives up the first before it takes the second, so a refusal that lingers
//! never makes the next client look like one too many (`ERR overloaded` instead of the
//! real reason).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Refused connections being closed lingering (the reply, then up to 2 s of reading what
/// the client still sends), all loops together. Past this many a refused socket gets its
/// reply and is closed at once, so that refusals cannot exhaust descriptors.
pub const MAX_REFUSING: usize = 256;

/// One place of a counted set (`listener.max_connections`, [`MAX_REFUSING`]); given back
/// on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl ConnectionSlot {
    /// Takes a place if fewer than `limit` are taken.
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

//! Rate limiting for refused-connection warnings.

use std::time::Duration;

use tokio::time::Instant;

/// Rate limiter for the refused-connection warnings: at most one line per second per
/// reason, summarising how many were refused since the last line.
///
/// A flood of refusals is exactly when logs must stay readable, so one line per refused
/// connection is out. Owned by a single task (the listener for `overloaded`, the
/// dispatcher for `exhausted`), so it needs no synchronisation; the owner writes the
/// `warn!` itself, so the line carries the owner's module as its target.
///
/// NOTE: refusals after the last line of a burst are only reported with the next refusal;
/// the periodic summary line (`admin::summary`) still counts them all.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Refused since the last line.
    pending: u64,
    /// When the last line was written.
    last: Option<Instant>,
}

impl RefusalLog {
    /// Minimum time between two lines.
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// Counts one refusal at `now`. Returns `Some(n)` when a line is due (the last one is
    /// [`Self::PERIOD`] old): `n` refusals since the last line, this one included.
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|last| now < last + Self::PERIOD) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_log_writes_at_most_one_line_per_second() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(
            log.refused(t0),
            Some(1),
            "the first refusal is reported at once"
        );
        for ms in 1..=999 {
            assert_eq!(log.refused(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.refused(t0 + Duration::from_secs(1)), Some(1000));
        assert_eq!(log.refused(t0 + Duration::from_millis(1500)), None);
    }
}

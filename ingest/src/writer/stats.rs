//! Counters of the writer, read by `/metrics`, `/health` and tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};

/// Counters of the writer, read by `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Delta commits made.
    pub commits: AtomicU64,
    /// Group commits (serving-store commits) made.
    pub batches: AtomicU64,
    /// Operations per committed group commit.
    pub batch_ops: SizeHistogram,
    /// Compaction rounds committed.
    pub compaction_rounds: AtomicU64,
    /// Compaction rounds dropped because a group commit changed one of their files.
    pub compaction_rounds_dropped: AtomicU64,
    /// Sequence of the last acknowledged group commit.
    pub acked_seq: AtomicI64,
    /// Sequence up to which every table is flushed to Delta.
    pub flushed_seq: AtomicI64,
    /// Flush rounds committed.
    pub flush_rounds: AtomicU64,
    /// Flush rounds that failed (and were retried).
    pub flush_failures: AtomicU64,
    /// Versions acknowledged and not yet flushed to Delta.
    pub buffered_rows: AtomicU64,
    /// Estimated memory of those versions (bytes).
    pub buffered_bytes: AtomicU64,
    /// Why the last flush failed, while flushes keep failing (`None` once one succeeds).
    pub flush_error: Mutex<Option<String>>,
}

impl WriterStats {
    /// Why flushing to Delta is failing, if it is.
    pub fn flush_error(&self) -> Option<String> {
        self.flush_error.lock().expect("stats lock").clone()
    }
}

/// A histogram of counts (sizes) in power-of-two buckets, lock-free.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    /// `buckets[i]`: observations `<= 2^i`; the last also takes everything larger.
    buckets: [std::sync::atomic::AtomicU64; SizeHistogram::BUCKETS],
    sum: std::sync::atomic::AtomicU64,
}

impl SizeHistogram {
    /// Buckets: 1, 2, 4, ... 2^16, then everything larger.
    pub const BUCKETS: usize = 18;

    /// Records one observation of `n`.
    pub fn observe(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = (n.max(1).next_power_of_two().trailing_zeros() as usize).min(Self::BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(n, Relaxed);
    }

    /// `(each bucket's upper bound, the last +inf, with its own count; sum; count)`.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = (0..Self::BUCKETS)
            .map(|i| {
                let bound = if i + 1 == Self::BUCKETS { f64::INFINITY } else { (1u64 << i) as f64 };
                (bound, self.buckets[i].load(Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        (buckets, self.sum.load(Relaxed), count)
    }
}

//! The memory allocator's own account of the process (issue 16): what the heap holds live,
//! what the allocator keeps around it, and what of that is resident.
//!
//! The `popsift` binary runs on jemalloc (`src/main.rs`); jemalloc keeps these counters
//! when built with statistics (the `stats` feature of `tikv-jemalloc-ctl`). They tell apart
//! what a PSS figure lumps together: live objects (`allocated`), pages holding them with
//! their size-class slack (`active`), the allocator's own bookkeeping (`metadata`), pages
//! still resident (`resident`: active + dirty pages not yet returned + metadata), and address
//! space mapped or kept for reuse (`mapped`, `retained`: not memory, not in PSS). Thread
//! stacks and the kernel's socket buffers are outside the allocator altogether.
//!
//! Exported as `popsift_allocator_bytes{kind}` (refreshed at each scrape), and in full
//! (jemalloc's `malloc_stats_print` JSON, per size class: `curregs` is the number of live
//! objects of that size) at `GET /debug/allocator` on the metrics port, which is how the
//! idle-sessions benchmark attributes the bytes of an idle session to object sizes.
//!
//! In a process whose global allocator is not jemalloc (unit tests) the figures describe
//! jemalloc's own, nearly empty heap; nothing here fails for that.

/// One reading of the allocator's counters, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Live objects, as requested (rounded to their size class).
    pub allocated: u64,
    /// Pages in use by live objects (≥ `allocated`: partly filled slabs).
    pub active: u64,
    /// The allocator's own bookkeeping.
    pub metadata: u64,
    /// Resident pages the allocator holds (active, dirty not yet returned, metadata).
    pub resident: u64,
    /// Address space of the active extents.
    pub mapped: u64,
    /// Address space kept for reuse after its pages were returned (not resident).
    pub retained: u64,
}

impl Figures {
    /// Every figure with its `kind` label, in a fixed order.
    pub fn labelled(&self) -> [(&'static str, u64); 6] {
        [
            ("allocated", self.allocated),
            ("active", self.active),
            ("metadata", self.metadata),
            ("resident", self.resident),
            ("mapped", self.mapped),
            ("retained", self.retained),
        ]
    }
}

/// The counters now (jemalloc caches them: the epoch is advanced first), or `None` when the
/// allocator keeps no statistics.
pub fn figures() -> Option<Figures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|v| v as u64);
    Some(Figures {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        metadata: read(stats::metadata::read())?,
        resident: read(stats::resident::read())?,
        mapped: read(stats::mapped::read())?,
        retained: read(stats::retained::read())?,
    })
}

/// jemalloc's full statistics as JSON (`malloc_stats_print` with `J`), per-arena tables
/// left out (the merged ones are kept). `None` if they could not be written.
pub fn stats_json() -> Option<String> {
    use tikv_jemalloc_ctl::{epoch, stats_print};
    epoch::advance().ok()?;
    let mut options = stats_print::Options::default();
    options.json_format = true;
    options.skip_per_arena = true;
    options.skip_mutex_statistics = true;
    let mut out = Vec::new();
    stats_print::stats_print(&mut out, options).ok()?;
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_and_consistent() {
        let f = figures().expect("jemalloc is built with statistics");
        // Whatever allocator the test binary uses, jemalloc's counters hang together.
        assert!(f.active >= f.allocated, "{f:?}");
        assert!(f.resident >= f.metadata, "{f:?}");
        assert_eq!(f.labelled().len(), 6);
    }

    #[test]
    fn stats_json_has_the_size_classes() {
        let s = stats_json().expect("statistics");
        let v: serde_json::Value = serde_json::from_str(&s).expect("JSON");
        let bins = &v["jemalloc"]["arenas"]["bin"];
        assert!(bins.as_array().is_some_and(|b| !b.is_empty()), "size classes listed");
    }
}

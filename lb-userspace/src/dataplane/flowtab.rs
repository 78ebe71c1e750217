//! The flow table (`FLOWS`: sets of `FLOW_WAYS` entries, see the data
//! path's `flowtab`) mapped into this process: read in place, with no
//! system call per entry, and a counted flow ended with one atomic
//! compare-and-swap on its stamp.
use super::*;
use lb_common::{FlowEntry, FlowSet, FLOW_GONE, FLOW_WAYS};
use std::sync::atomic::{AtomicU64, Ordering};

/// `FLOWS`, mapped.
pub struct FlowTable {
    ptr: *mut FlowSet,
    sets: usize,
    /// `Config::flow_seed`, for finding a key's set.
    seed: [u64; 2],
}

// SAFETY: the mapping is owned by this struct; the kernel writes it
// concurrently, so every access is a volatile copy or an atomic.
unsafe impl Send for FlowTable {}

const WAYS: usize = FLOW_WAYS as usize;

impl FlowTable {
    /// Maps `flows` (the `FLOWS` map); `seed`: the table's
    /// `Config::flow_seed`.
    pub fn map(flows: &MapData, seed: [u64; 2]) -> Result<Self> {
        let info = flows.info().map_err(map_err(maps::FLOWS))?;
        let sets = info.max_entries() as usize;
        let ptr = super::ring::mmap_array(flows, sets * size_of::<FlowSet>(), maps::FLOWS)?;
        Ok(FlowTable {
            ptr: ptr as *mut FlowSet,
            sets,
            seed,
        })
    }

    /// Entries in all (free or not).
    pub fn capacity(&self) -> usize {
        self.sets * WAYS
    }

    /// A copy of entry `i` (set `i / FLOW_WAYS`, way `i % FLOW_WAYS`).
    fn entry(&self, i: usize) -> FlowEntry {
        assert!(i < self.capacity());
        // SAFETY: in bounds of the mapping, which lives as long as self.
        unsafe { std::ptr::read_volatile(self.entry_ptr(i)) }
    }

    fn entry_ptr(&self, i: usize) -> *mut FlowEntry {
        unsafe { (*self.ptr.add(i / WAYS)).ways.as_mut_ptr().add(i % WAYS) }
    }

    /// Hands each stored flow to `each` with its index, up to `limit`.
    pub fn each(&self, limit: usize, mut each: impl FnMut(usize, &FlowKey, &FlowValue)) {
        let mut seen = 0;
        for i in 0..self.capacity() {
            if seen >= limit {
                return;
            }
            let e = self.entry(i);
            if holds_flow(&e) {
                each(i, &e.key, &e.value);
                seen += 1;
            }
        }
    }

    /// Flows stored.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.each(usize::MAX, |_, _, _| n += 1);
        n
    }

    /// Whether no flow is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first entry of `key`'s set, as the data path finds it.
    fn first(&self, key: &FlowKey) -> usize {
        let h = lb_common::table_hash(key, &self.seed);
        ((h >> 32) as usize & (self.sets - 1)) * WAYS
    }

    /// The set `key` belongs to.
    pub fn set_of(&self, key: &FlowKey) -> usize {
        self.first(key) / WAYS
    }

    /// The index of `key`'s entry.
    fn find(&self, key: &FlowKey) -> Option<usize> {
        let first = self.first(key);
        (first..first + WAYS).find(|&i| {
            let e = self.entry(i);
            holds_flow(&e) && e.key == *key
        })
    }

    /// What the table holds for `key`.
    pub fn get(&self, key: &FlowKey) -> Option<FlowValue> {
        self.find(key).map(|i| self.entry(i).value)
    }

    /// Stores `value` for `key` where the data path would: its own entry,
    /// else the first one no flow holds, else the lowest `place_rank`.
    /// Not atomic against the data path writing the same set (tests and
    /// benches).
    pub fn insert(&self, key: &FlowKey, value: &FlowValue) {
        let first = self.first(key);
        let i = self.find(key).unwrap_or_else(|| {
            (first..first + WAYS)
                .find(|&i| !holds_flow(&self.entry(i)))
                .or_else(|| {
                    (first..first + WAYS).min_by_key(|&i| lb_common::place_rank(&self.entry(i)))
                })
                .expect("a set has ways")
        });
        let e = FlowEntry {
            key: *key,
            value: *value,
        };
        unsafe { std::ptr::write_volatile(self.entry_ptr(i), e) };
    }

    /// Forgets `key`'s entry (as an eviction would); whether it was there.
    pub fn remove(&self, key: &FlowKey) -> bool {
        let Some(i) = self.find(key) else {
            return false;
        };
        unsafe { std::ptr::write_volatile(&mut (*self.entry_ptr(i)).key.family, FLOW_GONE) };
        true
    }

    /// Sets entry `i`'s stamp (`FlowValue::last_seen_ns`) to `new` if it
    /// is still `old`: no packet has renewed it since, and no other flow
    /// took the entry (a new flow's stamp is its own time).
    pub fn swap_stamp(&self, i: usize, old: u64, new: u64) -> bool {
        assert!(i < self.capacity());
        // SAFETY: an aligned word of the mapping, changed atomically as the
        // data path changes it.
        let word =
            unsafe { &*(&raw mut (*self.entry_ptr(i)).value.last_seen_ns as *const AtomicU64) };
        word.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Drop for FlowTable {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr as *mut _, self.sets * size_of::<FlowSet>()) };
    }
}

/// Whether entry `e` holds a flow (neither never used nor gone).
fn holds_flow(e: &FlowEntry) -> bool {
    e.key.family != 0 && e.key.family != FLOW_GONE
}

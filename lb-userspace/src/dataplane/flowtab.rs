//! The flow table (`FLOWS`: an array of maps, each slot a chunk of
//! `FLOW_CHUNK_SETS` sets of `FLOW_WAYS` entries; see the data path's
//! `flowtab`), read here a chunk at a time. The kernel `kmalloc`s each
//! chunk, which puts the table in huge pages for the data path but keeps
//! it from being mapped into this process: a chunk is copied out with one
//! system call, and a counted flow is ended by `lb_flow_swap`, one
//! compare-and-swap on its stamp in the kernel (BPF_PROG_TEST_RUN).
use super::*;
use aya::maps::{ArrayOfMaps, Map};
use aya::programs::Xdp;
use lb_common::{FlowChunk, FlowEntry, FlowSwap, FLOW_CHUNK_SETS, FLOW_GONE, FLOW_WAYS};

/// `FLOWS`, open.
pub struct FlowTable {
    outer: Map,
    chunks: u32,
    /// The table's sets in use and hash key, for finding a key's set and
    /// walking only the sets in use; `None`: opened to walk all of it by
    /// index.
    keyed: Option<FlowGeometry>,
    /// Chunks kept open for lookups by key (opening one takes four system
    /// calls); at most `OPEN_CHUNKS`, so a big table holds no more
    /// descriptors than a process is usually allowed.
    open: std::sync::Mutex<std::collections::HashMap<u32, Chunk>>,
}

/// The flow table's sets in use and hash key, as `Config` has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowGeometry {
    /// `Config::flow_sets`: where a key is stored.
    pub sets: u32,
    /// `Config::flow_sets_old`: where it may still be while the table
    /// grows (else `sets`).
    pub old: u32,
    /// `Config::flow_seed`.
    pub seed: [u64; 2],
}

impl FlowGeometry {
    /// As `cfg` has it.
    pub fn of(cfg: &Config) -> Self {
        FlowGeometry {
            sets: cfg.flow_sets,
            old: cfg.flow_sets_old,
            seed: cfg.flow_seed,
        }
    }
}

/// Chunks `FlowTable` keeps open at most.
const OPEN_CHUNKS: usize = 256;

const WAYS: usize = FLOW_WAYS as usize;
const CHUNK_SETS: usize = FLOW_CHUNK_SETS as usize;

type Chunk = Array<MapData, FlowChunk>;

/// `xdp_action::XDP_PASS`: `lb_flow_swap` swapped.
const XDP_PASS: u32 = 2;

impl FlowTable {
    /// Opens `flows` (the `FLOWS` map) with its own handle. `keyed`: the
    /// table's sets in use and hash key, when keys are to be looked up.
    pub fn map(flows: &MapData, keyed: Option<FlowGeometry>) -> Result<Self> {
        let data = own_handle(flows, maps::FLOWS)?;
        let chunks = data.info().map_err(map_err(maps::FLOWS))?.max_entries();
        if let Some(g) = keyed {
            for sets in [g.sets, g.old] {
                if !sets.is_power_of_two() || lb_common::flow_chunks(sets) > chunks {
                    return Err(DataPlaneError::Setup(format!(
                        "a flow table of {sets} sets does not fit in {chunks} chunks (no \
                         configuration written yet?)"
                    )));
                }
            }
        }
        Ok(FlowTable {
            outer: Map::ArrayOfMaps(data),
            chunks,
            keyed,
            open: Default::default(),
        })
    }

    /// Entries in all (free or not).
    pub fn capacity(&self) -> usize {
        self.chunks as usize * CHUNK_SETS * WAYS
    }

    /// Chunk `c`'s inner map, open.
    fn chunk_map(&self, c: u32) -> Result<Chunk> {
        let outer: ArrayOfMaps<&MapData, Chunk> =
            ArrayOfMaps::try_from(&self.outer).map_err(map_err(maps::FLOWS))?;
        outer.get(&c, 0).map_err(map_err(maps::FLOWS))
    }

    /// A copy of chunk `c`; `keep`: keep its map open for the next
    /// lookup (a walk does not: it would fill the room with the first
    /// chunks).
    fn chunk(&self, c: u32, keep: bool) -> Result<Box<FlowChunk>> {
        self.with_chunk(c, keep, |m| m.get(&0, 0).map(Box::new))
    }

    /// `f` on chunk `c`'s map: the one kept open, else one opened for `f`
    /// (and kept, with `keep`, while there is room).
    fn with_chunk<T>(
        &self,
        c: u32,
        keep: bool,
        f: impl FnOnce(&mut Chunk) -> std::result::Result<T, aya::maps::MapError>,
    ) -> Result<T> {
        let mut open = self.open.lock().expect("open chunks");
        if let Some(m) = open.get_mut(&c) {
            return f(m).map_err(map_err(maps::FLOWS));
        }
        let mut m = self.chunk_map(c)?;
        let r = f(&mut m).map_err(map_err(maps::FLOWS));
        if keep && open.len() < OPEN_CHUNKS {
            open.insert(c, m);
        }
        r
    }

    /// Hands each stored flow to `each` with its index (set
    /// `i / FLOW_WAYS`, way `i % FLOW_WAYS`) and identity (see
    /// [`FlowTable::ident`]), up to `limit`.
    /// Only the sets in use, when opened with them.
    pub fn each(&self, limit: usize, mut each: impl FnMut(usize, u64, &FlowValue)) -> Result<()> {
        let mut seen = 0;
        let chunks = self
            .keyed
            .map_or(self.chunks, |g| lb_common::flow_chunks(g.sets.max(g.old)));
        for c in 0..chunks {
            let chunk = self.chunk(c, false)?;
            for s in 0..CHUNK_SETS {
                for w in 0..WAYS {
                    if seen >= limit {
                        return Ok(());
                    }
                    let e = chunk.entry(s, w);
                    if e.holds_flow() {
                        each((c as usize * CHUNK_SETS + s) * WAYS + w, e.ident, &e.value);
                        seen += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Flows stored.
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        self.each(usize::MAX, |_, _, _| n += 1)?;
        Ok(n)
    }

    /// Whether no flow is stored.
    pub fn is_empty(&self) -> Result<bool> {
        let mut any = false;
        self.each(1, |_, _, _| any = true)?;
        Ok(!any)
    }

    /// The set `key` belongs to and its identity there
    /// (`FlowEntry::ident`), as the data path finds them.
    fn place_of(&self, key: &FlowKey) -> (usize, u64) {
        let g = self.keyed.expect("a flow table opened with its key");
        let (set, ident) = lb_common::flow_place(key, &g.seed, g.sets);
        (set as usize, ident)
    }

    /// The set the flow of identity `ident` (now in set `set`) may still
    /// be in while the table grows, if another.
    fn old_set(&self, set: usize, ident: u64) -> Option<usize> {
        let g = self.keyed.expect("a flow table opened with its key");
        let old = lb_common::ident_set(ident, g.old) as usize;
        (old != set).then_some(old)
    }

    /// The set `key` belongs to, as the data path finds it.
    pub fn set_of(&self, key: &FlowKey) -> usize {
        self.place_of(key).0
    }

    /// The table's hash key (`Config::flow_seed`), when opened with it.
    pub fn seed(&self) -> Option<[u64; 2]> {
        self.keyed.map(|g| g.seed)
    }

    /// `key`'s identity in its set, as [`FlowTable::each`] gives it (the
    /// table keeps no key).
    pub fn ident(&self, key: &FlowKey) -> u64 {
        self.place_of(key).1
    }

    /// `key`'s chunk, copied, its set's place in it, and `key`'s identity:
    /// where it is stored, else (while the table grows) where it was.
    fn chunk_of_key(&self, key: &FlowKey) -> Result<(u32, usize, u64, Box<FlowChunk>)> {
        let (set, ident) = self.place_of(key);
        let (c, s) = lb_common::chunk_of(set as u32);
        let chunk = self.chunk(c, true)?;
        if Self::find(&chunk, s as usize, ident).is_none() {
            if let Some(old) = self.old_set(set, ident) {
                let (c, s) = lb_common::chunk_of(old as u32);
                return Ok((c, s as usize, ident, self.chunk(c, true)?));
            }
        }
        Ok((c, s as usize, ident, chunk))
    }

    /// The way of the flow of identity `ident` in set `s` of `chunk`.
    fn find(chunk: &FlowChunk, s: usize, ident: u64) -> Option<usize> {
        // No entry that holds no flow has a flow's identity.
        (0..WAYS).find(|&w| chunk.entry(s, w).ident == ident)
    }

    /// What the table holds for `key`.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        let (_, s, ident, chunk) = self.chunk_of_key(key)?;
        Ok(Self::find(&chunk, s, ident).map(|w| chunk.entry(s, w).value))
    }

    /// Stores `value` for `key` where the data path would: its own entry,
    /// else the first one no flow holds, else the lowest `place_rank`; a
    /// UDP key's stamp marked `FLOW_UDP`, as the data path marks it.
    /// Rewrites the key's whole chunk: for tests and benches, with no
    /// packet in flight (a packet's write to the chunk meanwhile is lost).
    pub fn insert(&self, key: &FlowKey, value: &FlowValue) -> Result<()> {
        self.insert_all([(*key, *value)])
    }

    /// `insert` of many flows, each chunk read and written once.
    pub fn insert_all(&self, flows: impl IntoIterator<Item = (FlowKey, FlowValue)>) -> Result<()> {
        let mut by_chunk: std::collections::BTreeMap<u32, Vec<(usize, FlowEntry)>> =
            Default::default();
        for (key, mut value) in flows {
            if key.proto == lb_common::PROTO_UDP {
                value.last_seen_ns |= lb_common::FLOW_UDP;
            }
            let (set, ident) = self.place_of(&key);
            let (c, s) = lb_common::chunk_of(set as u32);
            by_chunk
                .entry(c)
                .or_default()
                .push((s as usize, FlowEntry { ident, value }));
        }
        for (c, entries) in by_chunk {
            let mut chunk = self.chunk(c, true)?;
            for (s, e) in entries {
                let w = Self::find(&chunk, s, e.ident).unwrap_or_else(|| {
                    (0..WAYS)
                        .find(|&w| !chunk.entry(s, w).holds_flow())
                        .or_else(|| {
                            (0..WAYS).min_by_key(|&w| lb_common::place_rank(&chunk.entry(s, w)))
                        })
                        .expect("a set has ways")
                });
                chunk.set_entry(s, w, &e);
            }
            self.write(c, &chunk)?;
        }
        Ok(())
    }

    /// Forgets `key`'s entry (as an eviction would); whether it was there.
    /// Rewrites the chunk, as `insert` does.
    pub fn remove(&self, key: &FlowKey) -> Result<bool> {
        let (c, s, ident, mut chunk) = self.chunk_of_key(key)?;
        let Some(w) = Self::find(&chunk, s, ident) else {
            return Ok(false);
        };
        let mut e = chunk.entry(s, w);
        e.ident = FLOW_GONE;
        chunk.set_entry(s, w, &e);
        self.write(c, &chunk)?;
        Ok(true)
    }

    fn write(&self, c: u32, chunk: &FlowChunk) -> Result<()> {
        self.with_chunk(c, true, |m| m.set(0, chunk, 0))
    }

    /// Sets entry `i`'s stamp (`FlowValue::last_seen_ns`) to `new` if it
    /// is still `old` (no packet has renewed it since, and no other flow
    /// took the entry: a new flow's stamp is its own time), through
    /// `swap` (the object's `lb_flow_swap`). Whether it did.
    pub fn swap_stamp(&self, swap: &Xdp, i: usize, old: u64, new: u64) -> Result<bool> {
        assert!(i < self.capacity());
        let req = FlowSwap {
            index: i as u64,
            old,
            new,
        };
        Ok(super::programs::run_on(swap, progs::FLOW_SWAP, &req)? == XDP_PASS)
    }
}

//! Writes held back while the controller applies a pool
//! (`DataPlane::defer_writes`), made in batches: a slot's record, its
//! limit and its cleared statistics, one system call per map for a run
//! of them instead of one per write. Any other write makes the held ones
//! first, so the kernel sees every write in the controller's order; only
//! runs of these writes are merged.
use super::*;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Deferred {
    pub(super) on: bool,
    backends: BTreeMap<u32, Backend>,
    limits: BTreeMap<u32, BackendLimit>,
    /// Slots whose statistics and connection count are to start at 0.
    cleared: BTreeSet<u32>,
}

impl BpfDataPlane {
    /// Writes a slot's record now, or holds it while deferring.
    pub(super) fn put_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        if self.deferred.on {
            self.deferred.backends.insert(id, *b);
            return Ok(());
        }
        let mut a: Array<&mut MapData, Backend> =
            Array::try_from(self.map_mut(maps::BACKENDS)).map_err(map_err(maps::BACKENDS))?;
        a.set(id, *b, 0).map_err(map_err(maps::BACKENDS))
    }

    pub(super) fn put_limit(&mut self, id: u32, limit: &BackendLimit) -> Result<()> {
        if self.deferred.on {
            self.deferred.limits.insert(id, *limit);
            return Ok(());
        }
        let mut a: Array<&mut MapData, BackendLimit> =
            Array::try_from(self.map_mut(maps::LIMITS)).map_err(map_err(maps::LIMITS))?;
        a.set(id, *limit, 0).map_err(map_err(maps::LIMITS))
    }

    /// Zeroes a backend slot's statistics and connection count, now or
    /// with the held writes.
    pub(super) fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.deferred.cleared.insert(id);
        if self.deferred.on {
            return Ok(());
        }
        self.write_deferred()
    }

    /// Makes the held writes: one batch per map.
    pub(super) fn write_deferred(&mut self) -> Result<()> {
        let d = std::mem::take(&mut self.deferred.backends);
        let (keys, values): (Vec<u32>, Vec<Backend>) = d.into_iter().unzip();
        self.update(maps::BACKENDS, &keys, &values, 1)?;
        let d = std::mem::take(&mut self.deferred.limits);
        let (keys, values): (Vec<u32>, Vec<BackendLimit>) = d.into_iter().unzip();
        self.update(maps::LIMITS, &keys, &values, 1)?;
        let keys: Vec<u32> = std::mem::take(&mut self.deferred.cleared)
            .into_iter()
            .collect();
        let zeros = vec![BackendStats::default(); keys.len() * self.cpus];
        self.update(maps::BACKEND_STATS, &keys, &zeros, self.cpus)?;
        self.update(maps::LOADS, &keys, &vec![0u64; keys.len()], 1)
    }

    fn update<V: Copy>(
        &self,
        name: &'static str,
        keys: &[u32],
        values: &[V],
        per_key: usize,
    ) -> Result<()> {
        batch::update_batch(self.batch_map(name)?, keys, values, per_key).map_err(|source| {
            DataPlaneError::Io {
                what: format!("writing {} entries of `{name}`", keys.len()),
                source,
            }
        })
    }
}

//! Ids: the VIP ids and backend slots in use (running, adopted from an
//! earlier run, retired), and the allocation of free ones.
use super::*;

impl<D: DataPlane> Controller<D> {
    pub(super) fn used_vip_ids(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .map(|v| v.id)
            .chain(self.adopted_vips.values().map(|(id, _)| *id))
            .collect()
    }

    fn used_backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .flat_map(|v| v.backends.values().map(|b| b.id))
            .chain(self.adopted_backends.values().map(|(id, _)| *id))
            .chain(self.retired.values().copied())
            .collect()
    }

    /// A slot for a new backend: the lowest free one, else the lowest
    /// retired one (whose remaining flows are then rescheduled). The free
    /// slots are worked out once per `apply` and kept up to date while it
    /// runs, so a pool of N new backends costs O(N log N), not O(N²).
    pub(super) fn alloc_backend_id(&mut self) -> Result<u32, ControlError> {
        if self.free_backend_ids.is_none() {
            let used = self.used_backend_ids();
            let free = (0..self.max_backends)
                .filter(|i| !used.contains(i))
                .collect();
            self.free_backend_ids = Some(free);
        }
        if let Some(id) = self.free_backend_ids.as_mut().and_then(|f| f.pop_first()) {
            self.dp.clear_stats(None, Some(id))?;
            return Ok(id);
        }
        let oldest = self
            .retired
            .iter()
            .min_by_key(|(_, id)| **id)
            .map(|(k, id)| (*k, *id));
        match oldest {
            Some((k, id)) => {
                self.retired.remove(&k);
                self.release_backend(id)?;
                if let Some(free) = self.free_backend_ids.as_mut() {
                    free.remove(&id);
                }
                self.dp.clear_stats(None, Some(id))?;
                Ok(id)
            }
            None => Err(ControlError::Full {
                what: "backend",
                field: "max_backends",
                max: self.max_backends,
            }),
        }
    }

    /// The lowest id below `max` not in `used`.
    pub(super) fn free_id(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
        (0..max).find(|i| !used.contains(i))
    }
}

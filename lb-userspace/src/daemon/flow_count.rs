//! Active flows per backend for `lb status`, counted on a blocking thread
//! at a bounded share of a CPU.
use super::*;

pub(super) type FlowCounts = std::sync::Arc<std::sync::Mutex<(Option<Instant>, HashMap<u32, u64>)>>;

/// How often, at most, the flow table is walked for `lb status`.
const FLOW_COUNT_INTERVAL: Duration = Duration::from_secs(1);
/// The share of one CPU the walks may take: the walk copies the whole
/// table out a chunk at a time (about 70 ms at a million flows,
/// BENCHMARKS.md), and is paced to this share however long it takes.
const FLOW_COUNT_CPU_SHARE: u32 = 20;

/// The pause after a walk that took `took`: at least FLOW_COUNT_INTERVAL,
/// and long enough that walks take at most 1/FLOW_COUNT_CPU_SHARE of a CPU.
pub fn flow_count_pause(took: Duration) -> Duration {
    FLOW_COUNT_INTERVAL.max(took * (FLOW_COUNT_CPU_SHARE - 1))
}

/// Counts active flows on a blocking thread, with its own handles on the
/// pinned maps: walking a table of a million flows takes about 70 ms and
/// must not hold up the writer. The same pass keeps the connection counts
/// of least connections and `max_connections` true (idle flows ended,
/// evicted ones taken off). Paced by `flow_count_pause`; `lb status` says
/// how old the counts are.
pub(super) fn spawn_flow_counter(
    instance: String,
    max_idle_ns: u64,
    udp_idle_ns: u64,
    max_sets: u32,
    out: FlowCounts,
) {
    tokio::spawn(async move {
        loop {
            let i = instance.clone();
            let started = Instant::now();
            let counted = tokio::task::spawn_blocking(move || {
                dataplane::flow_census(&i, max_idle_ns, udp_idle_ns, 1 << 22, max_sets)
            })
            .await;
            let took = started.elapsed();
            match counted {
                Ok(Ok(c)) => {
                    if let Some(g) = c.growth {
                        log::info!(
                            "flow table grown from {} to {} entries in use ({} flows held){}",
                            g.from as u64 * lb_common::FLOW_WAYS as u64,
                            g.to as u64 * lb_common::FLOW_WAYS as u64,
                            c.held,
                            if g.sets_unmoved > 0 {
                                format!("; {} sets kept meeting packets' writes, their flows are scheduled anew", g.sets_unmoved)
                            } else {
                                String::new()
                            }
                        );
                    }
                    if c.ended + c.lost > 0 {
                        log::debug!(
                            "connection counts: {} idle flows ended, {} evicted ones taken off",
                            c.ended,
                            c.lost
                        );
                    }
                    *out.lock().expect("flow counts") = (Some(Instant::now()), c.flows)
                }
                Ok(Err(e)) => log::debug!("counting flows: {e}"),
                Err(_) => {}
            }
            tokio::time::sleep(flow_count_pause(took)).await;
        }
    });
}

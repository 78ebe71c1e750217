//! Active flows per backend for `lb status`, counted on a blocking thread
//! at a bounded share of a CPU.
use super::*;

pub(super) type FlowCounts = std::sync::Arc<std::sync::Mutex<Counted>>;

/// What the last census found.
#[derive(Default)]
pub(super) struct Counted {
    /// When; `None` before the first.
    pub at: Option<Instant>,
    /// Active flows per backend id.
    pub per_backend: HashMap<u32, u64>,
    /// The flow table: flows held, entries in use (it grows) and in all.
    pub table: Option<crate::status::FlowTableStatus>,
}

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
                let before = dataplane::new_flows_counted(&i)?;
                dataplane::flow_census(&i, max_idle_ns, udp_idle_ns, 1 << 22, max_sets)
                    .map(|c| (before, c))
            })
            .await;
            let took = started.elapsed();
            let mut watch = None;
            match counted {
                Ok(Ok((before, c))) => {
                    if let Some(g) = c.growth {
                        log_growth(&g, c.held);
                    }
                    if c.ended + c.lost > 0 {
                        log::debug!(
                            "connection counts: {} idle flows ended, {} evicted ones taken off",
                            c.ended,
                            c.lost
                        );
                    }
                    let ways = lb_common::FLOW_WAYS as u64;
                    watch = Some((before, c.held));
                    *out.lock().expect("flow counts") = Counted {
                        at: Some(Instant::now()),
                        per_backend: c.flows,
                        table: Some(crate::status::FlowTableStatus {
                            held: c.held,
                            in_use: c.sets as u64 * ways,
                            entries: max_sets as u64 * ways,
                        }),
                    }
                }
                Ok(Err(e)) => log::debug!("counting flows: {e}"),
                Err(_) => {}
            }
            let until = Instant::now() + flow_count_pause(took);
            match watch {
                Some((before, held)) => {
                    watch_new_flows(&instance, until, before, held, max_sets).await
                }
                None => tokio::time::sleep_until(until.into()).await,
            }
        }
    });
}

/// How often the new-flow counter is read between censuses.
const NEW_FLOW_POLL: Duration = Duration::from_millis(100);

/// Until `until`, reads the data path's new-flow counter every
/// `NEW_FLOW_POLL`, and grows the table as soon as the flows held at the
/// census (`held`, the counter then `before`) and the new ones since call
/// for it (`dataplane::grow_pinned`, which does nothing when they do not):
/// a burst of new connections then finds room within a fraction of a
/// second, not at the next census. (It counts each new flow, stored or
/// not, and none that ended: it may grow early, never late.)
async fn watch_new_flows(instance: &str, until: Instant, before: u64, held: u64, max_sets: u32) {
    loop {
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep(NEW_FLOW_POLL.min(until - now)).await;
        let i = instance.to_string();
        let grown = tokio::task::spawn_blocking(move || {
            let held = held + dataplane::new_flows_counted(&i)?.saturating_sub(before);
            dataplane::grow_pinned(&i, held, max_sets).map(|g| g.map(|g| (g, held)))
        })
        .await;
        match grown {
            Ok(Ok(Some((g, held)))) => log_growth(&g, held),
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => log::debug!("growing the flow table: {e}"),
        }
    }
}

fn log_growth(g: &dataplane::Growth, held: u64) {
    let ways = lb_common::FLOW_WAYS as u64;
    log::info!(
        "flow table grown from {} to {} entries in use ({held} flows held){}",
        g.from as u64 * ways,
        g.to as u64 * ways,
        if g.sets_unmoved > 0 {
            format!(
                "; {} sets kept meeting packets' writes, their flows are scheduled anew",
                g.sets_unmoved
            )
        } else {
            String::new()
        }
    );
}

//! The Prometheus endpoint (`metrics: {listen: ...}` in the pool file), in
//! the Prometheus text format (the `prometheus` crate). What the data path
//! counts (per VIP, per backend, by reason) is read from the maps at every
//! scrape, from the same snapshot `lb status` shows; what happens in the
//! daemon (probes, health transitions, reloads, table writes) is counted as
//! it happens.
use super::*;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the daemon exports (the dashboard and alert rules in
/// `deploy/` may name only these).
pub const NAMES: &[&str] = &[
    "lb_build_info",
    "lb_vip_packets_total",
    "lb_vip_bytes_total",
    "lb_vip_new_flows_total",
    "lb_vip_dropped_packets_total",
    "lb_vip_up",
    "lb_vip_panic",
    "lb_vip_backends",
    "lb_backend_packets_total",
    "lb_backend_bytes_total",
    "lb_backend_new_flows_total",
    "lb_backend_syn_retransmits_total",
    "lb_backend_refused_total",
    "lb_backend_handshake_seconds",
    "lb_backend_active_flows",
    "lb_backend_active_connections",
    "lb_backend_up",
    "lb_backend_weight",
    "lb_backend_state",
    "lb_datapath_packets_total",
    "lb_flow_table_active_flows",
    "lb_flow_table_capacity",
    "lb_flow_table_entries_in_use",
    "lb_flow_count_age_seconds",
    "lb_probes_total",
    "lb_probe_duration_seconds",
    "lb_health_transitions_total",
    "lb_passive_health_trips_total",
    "lb_reloads_total",
    "lb_table_writes_total",
    "lb_table_write_duration_seconds",
];

pub(super) struct Metrics {
    registry: Registry,
    // Read from the maps at each scrape.
    vip_packets: IntCounterVec,
    vip_bytes: IntCounterVec,
    vip_new_flows: IntCounterVec,
    vip_drops: IntCounterVec,
    vip_up: IntGaugeVec,
    vip_panic: IntGaugeVec,
    vip_backends: IntGaugeVec,
    be_packets: IntCounterVec,
    be_bytes: IntCounterVec,
    be_new_flows: IntCounterVec,
    be_syn_retransmits: IntCounterVec,
    be_refused: IntCounterVec,
    be_handshake: prometheus::GaugeVec,
    be_active_flows: IntGaugeVec,
    be_connections: IntGaugeVec,
    be_up: IntGaugeVec,
    be_weight: IntGaugeVec,
    be_state: IntGaugeVec,
    datapath: IntCounterVec,
    flows_active: IntGauge,
    flows_capacity: IntGauge,
    flows_in_use: IntGauge,
    flows_age: IntGauge,
    // Counted as they happen.
    probes: IntCounterVec,
    probe_seconds: HistogramVec,
    transitions: IntCounterVec,
    passive_trips: IntCounterVec,
    reloads: IntCounterVec,
    table_writes: IntCounter,
    table_write_seconds: Histogram,
}

const VB: &[&str] = &["vip", "backend"];

impl Metrics {
    pub(super) fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let single = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let build = gauge(
            "lb_build_info",
            "The daemon's version (value 1).",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let probe_seconds = HistogramVec::new(
            HistogramOpts::new(
                "lb_probe_duration_seconds",
                "Health probe duration, from its start to its result.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["backend", "check"],
        )
        .expect("metric");
        registry
            .register(Box::new(probe_seconds.clone()))
            .expect("register");
        let table_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "lb_table_write_duration_seconds",
                "Time to write a batch of health verdicts or a reload into the maps (Maglev tables included).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(table_write_seconds.clone()))
            .expect("register");
        let table_writes = IntCounter::new(
            "lb_table_writes_total",
            "Batches of health verdicts and reloads written into the maps.",
        )
        .expect("metric");
        registry
            .register(Box::new(table_writes.clone()))
            .expect("register");
        Metrics {
            vip_packets: counter("lb_vip_packets_total", "Packets forwarded for the VIP.", &["vip"]),
            vip_bytes: counter("lb_vip_bytes_total", "Bytes (IP length) forwarded for the VIP.", &["vip"]),
            vip_new_flows: counter("lb_vip_new_flows_total", "New flows of the VIP.", &["vip"]),
            vip_drops: counter(
                "lb_vip_dropped_packets_total",
                "Packets of the VIP dropped (no backend, no route, ...).",
                &["vip"],
            ),
            vip_up: gauge("lb_vip_up", "1 while some backend of the VIP takes new flows.", &["vip"]),
            vip_panic: gauge(
                "lb_vip_panic",
                "1 while the VIP is in panic mode (too few healthy backends: all take new flows).",
                &["vip"],
            ),
            vip_backends: gauge(
                "lb_vip_backends",
                "The VIP's backends by health (up, down, unchecked), at any size; the lb_backend_* series are left out above 4096 backends in all.",
                &["vip", "health"],
            ),
            be_packets: counter("lb_backend_packets_total", "Packets forwarded to the backend.", VB),
            be_bytes: counter("lb_backend_bytes_total", "Bytes (IP length) forwarded to the backend.", VB),
            be_new_flows: counter("lb_backend_new_flows_total", "New flows sent to the backend.", VB),
            be_syn_retransmits: counter(
                "lb_backend_syn_retransmits_total",
                "Client SYNs seen again for a flow to the backend (no SYN-ACK came back).",
                VB,
            ),
            be_refused: counter(
                "lb_backend_refused_total",
                "NAT: client SYNs the backend answered with a RST.",
                VB,
            ),
            be_handshake: {
                let g = prometheus::GaugeVec::new(
                    prometheus::Opts::new(
                        "lb_backend_handshake_seconds",
                        "NAT: smoothed time from a client's SYN to the backend's SYN-ACK.",
                    ),
                    VB,
                )
                .expect("metric");
                registry.register(Box::new(g.clone())).expect("register");
                g
            },
            be_active_flows: gauge(
                "lb_backend_active_flows",
                "Flows to the backend active within the UDP idle timeout (at least 60 s), as last counted.",
                VB,
            ),
            be_connections: gauge(
                "lb_backend_active_connections",
                "Active connections as the data path counts them (VIPs with least connections or max_connections).",
                VB,
            ),
            be_up: gauge("lb_backend_up", "1 while the backend passes its health checks (or has none).", VB),
            be_weight: gauge("lb_backend_weight", "The backend's weight in the pool file.", VB),
            be_state: gauge(
                "lb_backend_state",
                "1 for the backend's state: active, drain, disabled, removed (its flows still run).",
                &["vip", "backend", "state"],
            ),
            datapath: counter(
                "lb_datapath_packets_total",
                "Data-path decisions by reason (the counters `lb status` lists).",
                &["reason"],
            ),
            flows_active: single(
                "lb_flow_table_active_flows",
                "Active flows in the flow table, as last counted.",
            ),
            flows_capacity: single("lb_flow_table_capacity", "Entries the flow table holds."),
            flows_in_use: single(
                "lb_flow_table_entries_in_use",
                "Entries of the flow table in use: it grows as flows are held, up to its capacity (-1 before the first count).",
            ),
            flows_age: single(
                "lb_flow_count_age_seconds",
                "Age of the last count of active flows.",
            ),
            probes: counter(
                "lb_probes_total",
                "Health probes by result (success, failure).",
                &["backend", "check", "result"],
            ),
            transitions: counter(
                "lb_health_transitions_total",
                "Health changes of a backend of a VIP, by the state reached (up, down).",
                &["vip", "backend", "to"],
            ),
            passive_trips: counter(
                "lb_passive_health_trips_total",
                "Backends taken out by passive health (too many SYN retransmissions).",
                VB,
            ),
            reloads: counter(
                "lb_reloads_total",
                "Pool-file reloads by result (applied, rejected).",
                &["result"],
            ),
            probe_seconds,
            table_writes,
            table_write_seconds,
            registry,
        }
    }

    /// The exposition, with what the maps say now (`st`).
    pub(super) fn render(&self, st: &Status, flow_capacity: u32) -> String {
        for c in [
            &self.vip_packets,
            &self.vip_bytes,
            &self.vip_new_flows,
            &self.vip_drops,
            &self.be_packets,
            &self.be_bytes,
            &self.be_new_flows,
            &self.be_syn_retransmits,
            &self.be_refused,
            &self.datapath,
        ] {
            c.reset();
        }
        self.be_handshake.reset();
        for g in [
            &self.vip_up,
            &self.vip_panic,
            &self.vip_backends,
            &self.be_active_flows,
            &self.be_connections,
            &self.be_up,
            &self.be_weight,
            &self.be_state,
        ] {
            g.reset();
        }
        let mut active = 0;
        for v in &st.vips {
            let l = &[v.name.as_str()];
            self.vip_packets.with_label_values(l).inc_by(v.packets);
            self.vip_bytes.with_label_values(l).inc_by(v.bytes);
            self.vip_new_flows.with_label_values(l).inc_by(v.new_flows);
            self.vip_drops.with_label_values(l).inc_by(v.drops);
            self.vip_up
                .with_label_values(l)
                .set(i64::from(v.state != "down"));
            self.vip_panic
                .with_label_values(l)
                .set(i64::from(v.state == "panic"));
            let c = &v.counts;
            for (health, n) in [("up", c.up), ("down", c.down), ("unchecked", c.unchecked)] {
                self.vip_backends
                    .with_label_values(&[v.name.as_str(), health])
                    .set(n as i64);
            }
            active += c.active_flows;
            for b in &v.backends {
                let l = &[v.name.as_str(), b.address.as_str()];
                self.be_packets.with_label_values(l).inc_by(b.packets);
                self.be_bytes.with_label_values(l).inc_by(b.bytes);
                self.be_new_flows.with_label_values(l).inc_by(b.new_flows);
                self.be_syn_retransmits
                    .with_label_values(l)
                    .inc_by(b.syn_retransmits);
                self.be_refused.with_label_values(l).inc_by(b.refused);
                if let Some(ms) = b.handshake_ms {
                    self.be_handshake.with_label_values(l).set(ms / 1000.0);
                }
                self.be_active_flows
                    .with_label_values(l)
                    .set(b.active_flows as i64);
                if let Some(c) = b.connections {
                    self.be_connections.with_label_values(l).set(c as i64);
                }
                self.be_up
                    .with_label_values(l)
                    .set(i64::from(b.health != "down"));
                self.be_weight.with_label_values(l).set(i64::from(b.weight));
                self.be_state
                    .with_label_values(&[v.name.as_str(), b.address.as_str(), b.state.as_str()])
                    .set(1);
            }
        }
        for (reason, n) in &st.counters {
            self.datapath.with_label_values(&[reason]).inc_by(*n);
        }
        self.flows_active.set(active as i64);
        self.flows_capacity.set(i64::from(flow_capacity));
        self.flows_in_use
            .set(st.flow_table.map_or(-1, |t| t.in_use as i64));
        self.flows_age.set(st.flows_age_s.map_or(-1, |a| a as i64));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// A probe's result.
    pub(super) fn probe(&self, spec: &ProbeSpec, outcome: &crate::health::ProbeOutcome) {
        let backend = spec.target.ip().to_string();
        let check = check_label(spec);
        let result = if outcome.ok { "success" } else { "failure" };
        self.probes
            .with_label_values(&[&backend, &check, result])
            .inc();
        self.probe_seconds
            .with_label_values(&[&backend, &check])
            .observe(outcome.latency.as_secs_f64());
    }

    pub(super) fn transition(&self, vip: &str, backend: &str, up: bool) {
        let to = if up { "up" } else { "down" };
        self.transitions
            .with_label_values(&[vip, backend, to])
            .inc();
    }

    pub(super) fn passive_trip(&self, vip: &str, backend: &str) {
        self.passive_trips.with_label_values(&[vip, backend]).inc();
    }

    /// Drops the series of a prober that is gone, so label sets do not
    /// pile up as backends come and go.
    pub(super) fn forget_probe(&self, spec: &ProbeSpec) {
        let backend = spec.target.ip().to_string();
        let check = check_label(spec);
        for result in ["success", "failure"] {
            let _ = self.probes.remove_label_values(&[&backend, &check, result]);
        }
        let _ = self.probe_seconds.remove_label_values(&[&backend, &check]);
    }

    /// Drops the event series of a backend no longer in its VIP.
    pub(super) fn forget_backend(&self, vip: &str, backend: &str) {
        for to in ["up", "down"] {
            let _ = self.transitions.remove_label_values(&[vip, backend, to]);
        }
        let _ = self.passive_trips.remove_label_values(&[vip, backend]);
    }

    pub(super) fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.with_label_values(&[result]).inc();
    }

    pub(super) fn table_write(&self, took: Duration) {
        self.table_writes.inc();
        self.table_write_seconds.observe(took.as_secs_f64());
    }
}

/// `tcp:80`, `http:80/healthz`, `udp:53`, `exec`.
fn check_label(spec: &ProbeSpec) -> String {
    let port = spec.target.port();
    match &spec.kind {
        crate::health::ProbeKind::Tcp => format!("tcp:{port}"),
        crate::health::ProbeKind::Http { path, .. } => format!("http:{port}{path}"),
        crate::health::ProbeKind::Udp { .. } => format!("udp:{port}"),
        _ => "exec".into(),
    }
}

/// Serves `GET /metrics` on `addr`; each scrape asks the daemon's loop for
/// the text (`Control::Metrics`), so it reads the maps the daemon owns.
pub(super) async fn serve_metrics(listener: tokio::net::TcpListener, tx: mpsc::Sender<Control>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Request, Response, StatusCode};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most often: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let reply = |status, body: String| {
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                    };
                    if req.uri().path() != "/metrics" {
                        return reply(StatusCode::NOT_FOUND, "see /metrics\n".into());
                    }
                    let (otx, orx) = tokio::sync::oneshot::channel();
                    if tx.send(Control::Metrics(otx)).await.is_err() {
                        return reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
                    }
                    match orx.await {
                        Ok(text) => reply(StatusCode::OK, text),
                        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into()),
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;

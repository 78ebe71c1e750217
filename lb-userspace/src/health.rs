//! Health probes: tcp connect, http GET, udp send-and-expect, exec; rise/fall hysteresis.
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What one probe does. Built by `config` from the pool file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Healthy when a TCP connection to the port is accepted.
    Tcp,
    /// Healthy when `GET path` answers with `expect_status`.
    Http {
        path: String,
        expect_status: u16,
        host: Option<String>,
    },
    /// Healthy when a datagram `send` is answered; if `expect` is set, the
    /// answer must start with those bytes.
    Udp {
        send: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    /// Healthy when the command exits 0. `LB_BACKEND_ADDR` and `LB_BACKEND_PORT`
    /// are set in its environment.
    Exec { command: PathBuf, args: Vec<String> },
}

/// A probe schedule for one backend (one prober serves every VIP that
/// checks the backend the same way).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// Address probed (the backend address and the health-check port).
    pub target: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make a down backend up.
    pub rise: u32,
    /// Consecutive failures that make an up backend down.
    pub fall: u32,
}

/// Whether a backend receives new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Whether this probe counts as a success.
    pub ok: bool,
    /// Lowercase and specific, for logs and `lb status`: "connected",
    /// "connection refused", "timed out after 200ms", "status 503",
    /// "status 200", "answered", "exit code 2", "killed by signal 9",
    /// "no answer", "answer did not match", "spawn failed: ...".
    pub detail: String,
    /// Time from the start of the probe to its result (for a timeout, about
    /// the timeout).
    pub latency: Duration,
}

/// Why a probe failed; its `Display` is the outcome's `detail`.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("timed out after {}ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("{}", io_detail(.0))]
    Io(io::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("exit code {0}")]
    ExitCode(i32),
    #[error("killed by signal {0}")]
    Signal(i32),
    #[error("no answer")]
    NoAnswer,
    #[error("answer did not match")]
    Mismatch,
    #[error("spawn failed: {}", io_detail(.0))]
    Spawn(io::Error),
    #[error("invalid http request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("http error: {0}")]
    Http(#[from] hyper::Error),
    #[error("wait for command failed: {}", io_detail(.0))]
    Wait(io::Error),
}

impl From<io::Error> for ProbeFailure {
    fn from(e: io::Error) -> Self {
        ProbeFailure::Io(e)
    }
}

/// An io error as a lowercase phrase without the "(os error N)" suffix:
/// "connection refused", "no such file or directory".
fn io_detail(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()).to_lowercase(),
    }
}

/// Runs one probe; the whole probe (connect, request, answer, command) is
/// bounded by `spec.timeout`. Never fails: a failure is an outcome with
/// `ok == false` and a detail saying why.
pub async fn probe_once(spec: &ProbeSpec) -> ProbeOutcome {
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let result = match tokio::time::timeout_at(deadline, run_probe(spec, deadline)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::TimedOut(spec.timeout)),
    };
    let latency = start.elapsed();
    match result {
        Ok(detail) => ProbeOutcome {
            ok: true,
            detail,
            latency,
        },
        Err(failure) => ProbeOutcome {
            ok: false,
            detail: failure.to_string(),
            latency,
        },
    }
}

/// Runs the probe without the overall timeout; returns the success detail.
async fn run_probe(spec: &ProbeSpec, deadline: Instant) -> Result<String, ProbeFailure> {
    match &spec.kind {
        ProbeKind::Tcp => {
            let stream = TcpStream::connect(spec.target).await?;
            // Closed with a RST: no TIME_WAIT socket left on the balancer
            // per probe (1000 backends every 200 ms would leave ~300 000).
            let _ = stream.set_zero_linger();
            Ok("connected".to_string())
        }
        ProbeKind::Http {
            path,
            expect_status,
            host,
        } => probe_http(spec.target, path, *expect_status, host.as_deref()).await,
        ProbeKind::Udp { send, expect } => {
            probe_udp(spec.target, send, expect.as_deref(), deadline).await
        }
        ProbeKind::Exec { command, args } => probe_exec(spec.target, command, args).await,
    }
}

async fn probe_http(
    target: SocketAddr,
    path: &str,
    expect_status: u16,
    host: Option<&str>,
) -> Result<String, ProbeFailure> {
    let stream = TcpStream::connect(target).await?;
    // Closed with a RST once answered: no TIME_WAIT on the balancer.
    let _ = stream.set_zero_linger();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let host = match host {
        Some(h) => h.to_string(),
        None => target.to_string(),
    };
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;

    // The connection future does the I/O; drive it here (not in a spawned
    // task) so that the probe's timeout also ends the connection.
    let response = sender.send_request(request);
    tokio::pin!(conn, response);
    let response = tokio::select! {
        biased;
        r = &mut response => r?,
        c = &mut conn => {
            c?;
            // The connection ended cleanly; the response (or its error) is
            // already queued.
            response.await?
        }
    };
    let status = response.status().as_u16();
    if status == expect_status {
        Ok(format!("status {status}"))
    } else {
        Err(ProbeFailure::Status(status))
    }
}

async fn probe_udp(
    target: SocketAddr,
    send: &[u8],
    expect: Option<&[u8]>,
    deadline: Instant,
) -> Result<String, ProbeFailure> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    socket.send(send).await?;
    let mut buf = vec![0u8; 65536];
    // An ICMP port unreachable comes back as ECONNREFUSED from recv.
    let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
        Ok(r) => r?,
        Err(_) => return Err(ProbeFailure::NoAnswer),
    };
    match expect {
        Some(prefix) if !buf[..n].starts_with(prefix) => Err(ProbeFailure::Mismatch),
        _ => Ok("answered".to_string()),
    }
}

/// Kills a process group with SIGKILL when dropped while armed, so a probe
/// command that times out takes its children (a script's `curl`) with it.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) has no memory-safety preconditions. The group
            // leader is our unreaped child (the guard is disarmed once it is
            // waited for), so the group id cannot have been reused.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

async fn probe_exec(
    target: SocketAddr,
    command: &std::path::Path,
    args: &[String],
) -> Result<String, ProbeFailure> {
    let mut child = tokio::process::Command::new(command)
        .args(args)
        .env("LB_BACKEND_ADDR", target.ip().to_string())
        .env("LB_BACKEND_PORT", target.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(ProbeFailure::Spawn)?;
    // Declared after `child`, so on timeout it is dropped first: the group
    // is killed while the leader is still unreaped.
    let mut guard = KillGroupOnDrop(child.id().and_then(|id| i32::try_from(id).ok()));
    let status = child.wait().await.map_err(ProbeFailure::Wait)?;
    guard.0 = None;
    match status.code() {
        Some(0) => Ok("exit code 0".to_string()),
        Some(code) => Err(ProbeFailure::ExitCode(code)),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(ProbeFailure::Signal(status.signal().unwrap_or(0)))
        }
    }
}

/// Rise/fall hysteresis: a down backend becomes up after `rise` consecutive
/// successes, an up backend down after `fall` consecutive failures. A `rise`
/// or `fall` of 0 is taken as 1.
///
/// Flapping is damped: a backend that goes down again less than
/// `FLAP_WINDOW` after it came up needs twice as many successes to come up
/// the next time (up to `MAX_RISE_FACTOR` times `rise`), until it has stayed
/// up for a whole `FLAP_WINDOW`.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    health: Health,
    rise: u32,
    fall: u32,
    /// Consecutive results that disagree with the current state.
    streak: u32,
    /// `rise` is multiplied by this (1 until the backend flaps).
    factor: u32,
    /// When the backend last came up (None: it started up).
    up_since: Option<Instant>,
}

/// A backend that fails again this soon after coming up is flapping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(10);
/// The most a flapping backend's `rise` is multiplied by.
pub const MAX_RISE_FACTOR: u32 = 8;

impl Hysteresis {
    pub fn new(initial: Health, rise: u32, fall: u32) -> Self {
        Hysteresis {
            health: initial,
            rise: rise.max(1),
            fall: fall.max(1),
            streak: 0,
            factor: 1,
            up_since: None,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records a probe result; returns Some(new) when the state changes.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        self.record_at(ok, Instant::now())
    }

    /// `record` for a probe that ended at `now`.
    pub fn record_at(&mut self, ok: bool, now: Instant) -> Option<Health> {
        let stable = |since: Option<Instant>| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= FLAP_WINDOW)
        };
        let (needed, next) = match (self.health, ok) {
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                if self.health == Health::Up && stable(self.up_since) {
                    self.factor = 1;
                }
                return None;
            }
            (Health::Up, false) => (self.fall, Health::Down),
            (Health::Down, true) => (self.rise * self.factor, Health::Up),
        };
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.health = next;
        match next {
            Health::Down if self.up_since.is_some() && !stable(self.up_since) => {
                self.factor = (self.factor * 2).min(MAX_RISE_FACTOR);
            }
            Health::Down => {}
            Health::Up => self.up_since = Some(now),
        }
        Some(next)
    }
}

/// What a prober reports after every probe.
#[derive(Clone, Debug)]
pub struct HealthEvent<K> {
    pub backend: K,
    pub outcome: ProbeOutcome,
    /// Some when this probe changed the backend's state.
    pub changed: Option<Health>,
    /// The backend's state after this probe.
    pub health: Health,
    /// Consecutive probes with this probe's result, this one included
    /// (counted apart from the hysteresis, so the log can say how many
    /// failures took a backend down).
    pub in_a_row: u32,
}

/// A running prober; dropping it stops the probing task.
#[derive(Debug)]
pub struct ProberHandle {
    task: JoinHandle<()>,
}

impl ProberHandle {
    /// True once the task has ended (aborted, or its receiver is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ProberHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns a tokio task probing `spec` every `spec.interval` (the first
/// probe at once, the later ones shifted by a random part of an interval,
/// at most a second, so that thousands of probers do not run in lockstep;
/// a zero interval is taken as 1ms), sending every result to
/// `tx`; the task ends when the returned handle is dropped/aborted or the
/// receiver is gone. Must be called inside a tokio runtime.
pub fn spawn_prober<K: Clone + Send + 'static>(
    backend: K,
    spec: ProbeSpec,
    initial: Health,
    tx: mpsc::Sender<HealthEvent<K>>,
) -> ProberHandle {
    let task = tokio::spawn(async move {
        let mut hysteresis = Hysteresis::new(initial, spec.rise, spec.fall);
        let period = spec.interval.max(Duration::from_millis(1));
        let jitter = period
            .min(Duration::from_secs(1))
            .mul_f64(random_fraction());
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut last_ok, mut in_a_row) = (None, 0u32);
        let mut first = true;
        loop {
            let outcome = tokio::select! {
                _ = tx.closed() => break,
                outcome = async {
                    ticker.tick().await;
                    probe_once(&spec).await
                } => outcome,
            };
            if std::mem::take(&mut first) {
                // The first probe runs at once (it also has the kernel learn
                // the backend's MAC before traffic needs it); the later ones
                // are shifted by a random part of an interval.
                tokio::time::sleep(jitter).await;
                ticker.reset();
            }
            let changed = hysteresis.record(outcome.ok);
            in_a_row = if last_ok == Some(outcome.ok) {
                in_a_row.saturating_add(1)
            } else {
                1
            };
            last_ok = Some(outcome.ok);
            let event = HealthEvent {
                backend: backend.clone(),
                outcome,
                changed,
                health: hysteresis.health(),
                in_a_row,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    ProberHandle { task }
}

/// A number in [0, 1) from the kernel's random source (0 if it cannot be read).
fn random_fraction() -> f64 {
    use std::io::Read;
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    f64::from(u32::from_ne_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flapping_backend_needs_more_successes_until_it_stays_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = Hysteresis::new(Health::Up, 2, 1);
        // Rises needed after each flap: 2, then 4, 8, 16, capped at 16.
        let mut ms = 0;
        for needed in [2u32, 4, 8, 16, 16] {
            ms += 100;
            assert_eq!(h.record_at(false, at(ms)), Some(Health::Down));
            for i in 1..=needed {
                ms += 100;
                let r = h.record_at(true, at(ms));
                assert_eq!(
                    r,
                    (i == needed).then_some(Health::Up),
                    "rise {i} of {needed}"
                );
            }
        }
        // Up for a whole window: forgiven.
        ms += FLAP_WINDOW.as_millis() as u64;
        assert_eq!(h.record_at(true, at(ms)), None);
        assert_eq!(h.record_at(false, at(ms + 100)), Some(Health::Down));
        assert_eq!(h.record_at(true, at(ms + 200)), None);
        assert_eq!(h.record_at(true, at(ms + 300)), Some(Health::Up));
    }
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Response, StatusCode};
    use std::convert::Infallible;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    const LONG: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(200);

    fn spec(kind: ProbeKind, target: SocketAddr, timeout: Duration) -> ProbeSpec {
        ProbeSpec {
            kind,
            target,
            interval: Duration::from_millis(50),
            timeout,
            rise: 2,
            fall: 2,
        }
    }

    /// A loopback address with nothing listening on it (bound, then released).
    async fn closed_tcp_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    async fn closed_udp_port() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    }

    fn assert_failed(outcome: &ProbeOutcome, detail: &str) {
        assert!(!outcome.ok, "expected failure, got {outcome:?}");
        assert_eq!(outcome.detail, detail, "{outcome:?}");
    }

    fn assert_succeeded(outcome: &ProbeOutcome, detail: &str) {
        assert!(outcome.ok, "expected success, got {outcome:?}");
        assert_eq!(outcome.detail, detail, "{outcome:?}");
    }

    // ---- tcp ----

    #[tokio::test]
    async fn tcp_probe_up_when_listener_accepts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let outcome = probe_once(&spec(ProbeKind::Tcp, target, LONG)).await;
        assert_succeeded(&outcome, "connected");
        assert!(outcome.latency < LONG);
        // The probe really reached this listener.
        let accepted = tokio::time::timeout(LONG, listener.accept()).await;
        assert!(matches!(accepted, Ok(Ok(_))), "{accepted:?}");
    }

    #[tokio::test]
    async fn tcp_probe_refused_on_closed_port() {
        let target = closed_tcp_port().await;
        let outcome = probe_once(&spec(ProbeKind::Tcp, target, LONG)).await;
        assert_failed(&outcome, "connection refused");
    }

    // ---- http ----

    /// A real HTTP/1.1 server on loopback: `/healthz` 200, `/sick` 503,
    /// `/strict` 200 only for `GET` with the expected `Host` and
    /// `Connection: close` (else 400), `/hang` never answers, anything else 404.
    async fn http_server(expected_host: Option<String>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected_host = Arc::new(expected_host.unwrap_or_else(|| addr.to_string()));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let expected_host = expected_host.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let expected_host = expected_host.clone();
                    async move {
                        let header = |name| {
                            req.headers()
                                .get(name)
                                .and_then(|v: &hyper::header::HeaderValue| {
                                    v.to_str().ok().map(str::to_string)
                                })
                        };
                        let status = match req.uri().path() {
                            "/healthz" => StatusCode::OK,
                            "/sick" => StatusCode::SERVICE_UNAVAILABLE,
                            "/strict" => {
                                let good = req.method() == Method::GET
                                    && header(HOST).as_deref() == Some(expected_host.as_str())
                                    && header(CONNECTION).as_deref() == Some("close");
                                if good {
                                    StatusCode::OK
                                } else {
                                    StatusCode::BAD_REQUEST
                                }
                            }
                            "/hang" => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                StatusCode::OK
                            }
                            _ => StatusCode::NOT_FOUND,
                        };
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"body")));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn http(path: &str, expect_status: u16, host: Option<&str>) -> ProbeKind {
        ProbeKind::Http {
            path: path.to_string(),
            expect_status,
            host: host.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn http_probe_healthy_on_expected_status() {
        let addr = http_server(None).await;
        let outcome = probe_once(&spec(http("/healthz", 200, None), addr, LONG)).await;
        assert_succeeded(&outcome, "status 200");
    }

    #[tokio::test]
    async fn http_probe_unhealthy_on_503() {
        let addr = http_server(None).await;
        let outcome = probe_once(&spec(http("/sick", 200, None), addr, LONG)).await;
        assert_failed(&outcome, "status 503");
    }

    #[tokio::test]
    async fn http_probe_expecting_503_is_healthy_on_503() {
        let addr = http_server(None).await;
        let outcome = probe_once(&spec(http("/sick", 503, None), addr, LONG)).await;
        assert_succeeded(&outcome, "status 503");
    }

    #[tokio::test]
    async fn http_probe_wrong_path_reports_404() {
        let addr = http_server(None).await;
        let outcome = probe_once(&spec(http("/nope", 200, None), addr, LONG)).await;
        assert_failed(&outcome, "status 404");
    }

    #[tokio::test]
    async fn http_probe_sends_target_as_host_and_connection_close() {
        let addr = http_server(None).await;
        let outcome = probe_once(&spec(http("/strict", 200, None), addr, LONG)).await;
        assert_succeeded(&outcome, "status 200");
    }

    #[tokio::test]
    async fn http_probe_sends_configured_host() {
        let addr = http_server(Some("backend.internal".to_string())).await;
        let with_host = http("/strict", 200, Some("backend.internal"));
        assert_succeeded(
            &probe_once(&spec(with_host, addr, LONG)).await,
            "status 200",
        );
        // Without the configured host the server sees the address and refuses.
        let without = http("/strict", 200, None);
        assert_failed(&probe_once(&spec(without, addr, LONG)).await, "status 400");
    }

    #[tokio::test]
    async fn http_probe_refused_on_closed_port() {
        let target = closed_tcp_port().await;
        let outcome = probe_once(&spec(http("/healthz", 200, None), target, LONG)).await;
        assert_failed(&outcome, "connection refused");
    }

    #[tokio::test]
    async fn http_probe_times_out_when_server_never_answers() {
        let addr = http_server(None).await;
        let outcome = probe_once(&spec(http("/hang", 200, None), addr, SHORT)).await;
        assert_failed(&outcome, "timed out after 200ms");
        assert!(
            outcome.latency >= SHORT && outcome.latency < Duration::from_secs(2),
            "{outcome:?}"
        );
    }

    // ---- udp ----

    /// A UDP echo server on loopback; returns its address.
    async fn udp_echo() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
                socket.send_to(&buf[..n], peer).await.unwrap();
            }
        });
        addr
    }

    fn udp(send: &[u8], expect: Option<&[u8]>) -> ProbeKind {
        ProbeKind::Udp {
            send: send.to_vec(),
            expect: expect.map(<[u8]>::to_vec),
        }
    }

    #[tokio::test]
    async fn udp_probe_healthy_when_answered() {
        let addr = udp_echo().await;
        let any = probe_once(&spec(udp(b"ping", None), addr, LONG)).await;
        assert_succeeded(&any, "answered");
        let prefix = probe_once(&spec(udp(b"ping", Some(b"pi")), addr, LONG)).await;
        assert_succeeded(&prefix, "answered");
    }

    #[tokio::test]
    async fn udp_probe_unhealthy_when_answer_does_not_match() {
        let addr = udp_echo().await;
        let outcome = probe_once(&spec(udp(b"ping", Some(b"pong")), addr, LONG)).await;
        assert_failed(&outcome, "answer did not match");
    }

    #[tokio::test]
    async fn udp_probe_no_answer_times_out() {
        // Bound (so no ICMP unreachable) but silent.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let outcome = probe_once(&spec(udp(b"ping", None), addr, SHORT)).await;
        assert_failed(&outcome, "no answer");
        assert!(
            outcome.latency >= SHORT && outcome.latency < Duration::from_secs(2),
            "{outcome:?}"
        );
        // The datagram did arrive.
        let mut buf = [0u8; 16];
        let n = silent.try_recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
    }

    #[tokio::test]
    async fn udp_probe_refused_on_closed_port() {
        let target = closed_udp_port().await;
        let outcome = probe_once(&spec(udp(b"ping", None), target, LONG)).await;
        assert_failed(&outcome, "connection refused");
    }

    // ---- exec ----

    fn exec(command: &str, args: &[&str]) -> ProbeKind {
        ProbeKind::Exec {
            command: PathBuf::from(command),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn exec_target() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    #[tokio::test]
    async fn exec_probe_true_is_healthy() {
        let outcome = probe_once(&spec(exec("true", &[]), exec_target(), LONG)).await;
        assert_succeeded(&outcome, "exit code 0");
    }

    #[tokio::test]
    async fn exec_probe_false_is_unhealthy() {
        let outcome = probe_once(&spec(exec("false", &[]), exec_target(), LONG)).await;
        assert_failed(&outcome, "exit code 1");
    }

    #[tokio::test]
    async fn exec_probe_reports_exit_code() {
        let kind = exec("sh", &["-c", "exit 2"]);
        let outcome = probe_once(&spec(kind, exec_target(), LONG)).await;
        assert_failed(&outcome, "exit code 2");
    }

    #[tokio::test]
    async fn exec_probe_reports_signal() {
        let kind = exec("sh", &["-c", "kill -9 $$"]);
        let outcome = probe_once(&spec(kind, exec_target(), LONG)).await;
        assert_failed(&outcome, "killed by signal 9");
    }

    #[tokio::test]
    async fn exec_probe_sees_backend_address_in_env() {
        let script = r#"test "$LB_BACKEND_ADDR" = 127.0.0.1 && test "$LB_BACKEND_PORT" = 8080"#;
        let ok = probe_once(&spec(exec("sh", &["-c", script]), exec_target(), LONG)).await;
        assert_succeeded(&ok, "exit code 0");
        let other: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let wrong = probe_once(&spec(exec("sh", &["-c", script]), other, LONG)).await;
        assert_failed(&wrong, "exit code 1");
    }

    #[tokio::test]
    async fn exec_probe_spawn_failure_is_reported() {
        let kind = exec("/nonexistent/lb-health-check", &[]);
        let outcome = probe_once(&spec(kind, exec_target(), LONG)).await;
        assert_failed(&outcome, "spawn failed: no such file or directory");
    }

    /// Whether `pid` is gone or a zombie (killed, not yet reaped).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                state.starts_with('Z') || state.starts_with('X')
            }
        }
    }

    #[tokio::test]
    async fn exec_probe_killed_at_timeout_with_its_children() {
        let dir = std::env::temp_dir().join(format!("lb-health-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pids = dir.join("pids");
        // The shell records its own pid and that of a background sleep.
        let script = format!("sleep 30 & echo $$ $! > {}; wait", pids.display());
        let kind = exec("sh", &["-c", &script]);
        let outcome = probe_once(&spec(kind, exec_target(), SHORT)).await;
        assert_failed(&outcome, "timed out after 200ms");
        assert!(
            outcome.latency >= SHORT && outcome.latency < Duration::from_secs(2),
            "{outcome:?}"
        );

        let text = std::fs::read_to_string(&pids).unwrap();
        let pids: Vec<i32> = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{text:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !pids.iter().all(|&p| is_dead(p)) {
            assert!(
                std::time::Instant::now() < deadline,
                "still running: {pids:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- hysteresis ----

    #[test]
    fn hysteresis_falls_after_fall_consecutive_failures() {
        let mut h = Hysteresis::new(Health::Up, 2, 3);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None, "a success resets the failure streak");
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.health(), Health::Up);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.record(false), None, "already down");
    }

    #[test]
    fn hysteresis_rises_after_rise_consecutive_successes() {
        let mut h = Hysteresis::new(Health::Down, 2, 3);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None, "a failure resets the success streak");
        assert_eq!(h.record(true), None);
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.record(true), Some(Health::Up));
        assert_eq!(h.health(), Health::Up);
        assert_eq!(h.record(true), None, "already up");
        // The streak starts afresh after a change.
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Health::Down));
    }

    #[test]
    fn hysteresis_zero_thresholds_act_as_one() {
        let mut h = Hysteresis::new(Health::Up, 0, 0);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), Some(Health::Up));
    }

    // ---- spawn_prober ----

    async fn next_event<K>(rx: &mut mpsc::Receiver<HealthEvent<K>>) -> HealthEvent<K> {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("no event within 3s")
            .expect("prober ended")
    }

    /// Receives events until one changes the state; returns those events.
    async fn until_change<K>(rx: &mut mpsc::Receiver<HealthEvent<K>>) -> Vec<HealthEvent<K>> {
        let mut events = Vec::new();
        loop {
            let event = next_event(rx).await;
            let changed = event.changed.is_some();
            events.push(event);
            if changed {
                return events;
            }
        }
    }

    #[tokio::test]
    async fn prober_reports_down_when_listener_goes_and_up_when_it_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let interval = Duration::from_millis(50);
        let spec = ProbeSpec {
            kind: ProbeKind::Tcp,
            target,
            interval,
            timeout: SHORT,
            rise: 2,
            fall: 2,
        };
        let (tx, mut rx) = mpsc::channel(64);
        let _handle = spawn_prober("b1", spec, Health::Down, tx);

        // Two successes bring the initially-down backend up.
        let events = until_change(&mut rx).await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().all(|e| e.outcome.ok && e.backend == "b1"));
        assert_eq!(events[0].health, Health::Down);
        assert_eq!(events[1].changed, Some(Health::Up));
        assert_eq!(events[1].health, Health::Up);
        assert_eq!((events[0].in_a_row, events[1].in_a_row), (1, 2));

        // Listener gone: down after `fall` consecutive refusals.
        drop(listener);
        let dropped_at = Instant::now();
        let events = until_change(&mut rx).await;
        let took = dropped_at.elapsed();
        let last = events.last().unwrap();
        assert_eq!(last.changed, Some(Health::Down));
        assert_eq!(last.health, Health::Down);
        assert_eq!(last.in_a_row, 2, "{events:?}");
        let failures: Vec<_> = events.iter().filter(|e| !e.outcome.ok).collect();
        assert_eq!(failures.len(), 2, "{events:?}");
        assert!(failures
            .iter()
            .all(|e| e.outcome.detail == "connection refused"));
        // fall × interval, plus at most one interval already under way, plus slack.
        assert!(
            took < 3 * interval + Duration::from_secs(1),
            "down after {took:?}"
        );

        // Listener back on the same port: it went down within FLAP_WINDOW
        // of coming up, a flap, so up after twice `rise` successes.
        let listener = TcpListener::bind(target).await.unwrap();
        let rebound_at = Instant::now();
        let events = until_change(&mut rx).await;
        let took = rebound_at.elapsed();
        let last = events.last().unwrap();
        assert_eq!(last.changed, Some(Health::Up));
        assert_eq!(
            events.iter().filter(|e| e.outcome.ok).count(),
            4,
            "{events:?}"
        );
        assert!(
            took < 5 * interval + Duration::from_secs(1),
            "up after {took:?}"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn prober_probes_immediately_then_stops_when_handle_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spec = ProbeSpec {
            kind: ProbeKind::Tcp,
            target: listener.local_addr().unwrap(),
            interval: Duration::from_secs(3600),
            timeout: LONG,
            rise: 1,
            fall: 1,
        };
        let (tx, mut rx) = mpsc::channel(4);
        let handle = spawn_prober(7u32, spec, Health::Up, tx);
        // The first probe does not wait for the (hour-long) interval.
        let first = next_event(&mut rx).await;
        assert_eq!(first.backend, 7);
        assert!(first.outcome.ok, "{first:?}");
        assert_eq!(first.changed, None);
        assert_eq!(first.health, Health::Up);
        drop(handle);
        // The aborted task drops its sender, closing the channel.
        let end = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[tokio::test]
    async fn prober_ends_when_receiver_is_gone() {
        let target = closed_tcp_port().await;
        let spec = ProbeSpec {
            kind: ProbeKind::Tcp,
            target,
            interval: Duration::from_secs(3600),
            timeout: LONG,
            rise: 1,
            fall: 1,
        };
        let (tx, rx) = mpsc::channel(4);
        let handle = spawn_prober((), spec, Health::Up, tx);
        drop(rx);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !handle.is_finished() {
            assert!(
                Instant::now() < deadline,
                "prober still running without a receiver"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

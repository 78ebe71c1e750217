//! Health probes: tcp connect, http GET, udp send-and-expect, exec; rise/fall hysteresis.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What one probe does. Built by `config` from the pool file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Healthy when a TCP connection to the port is accepted.
    Tcp,
    /// Healthy when `GET path` answers with `expect_status`.
    Http { path: String, expect_status: u16, host: Option<String> },
    /// Healthy when a datagram `send` is answered; if `expect` is set, the
    /// answer must start with those bytes.
    Udp { send: Vec<u8>, expect: Option<Vec<u8>> },
    /// Healthy when the command exits 0. `LB_BACKEND_ADDR` and `LB_BACKEND_PORT`
    /// are set in its environment.
    Exec { command: PathBuf, args: Vec<String> },
}

/// A probe schedule for one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
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

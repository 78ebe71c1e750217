//! `lb`: the load balancer's command line.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{config, daemon, dataplane, status};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP Layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Driver,
    Generic,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load, attach and serve the pool file; reloads it when it changes and on SIGHUP.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// `text` (default) or `json`: one JSON object a line (ts, level,
        /// target, msg), for log shippers.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// eBPF object to load instead of the one built into `lb`.
        #[arg(long)]
        ebpf_object: Option<PathBuf>,
        /// Log the data path's decisions (each new flow's backend, each
        /// drop for want of one). Off by default, and then free; on, it
        /// costs per new flow: for debugging, not for production load.
        #[arg(long)]
        debug_datapath: bool,
    },
    /// Check a pool file and report every problem with its line and column.
    Validate { file: PathBuf },
    /// Show every VIP and backend: health, weight, traffic, connections.
    /// Above 4096 backends in all, each VIP's counts instead of its backends
    /// (`--all` lists them anyway).
    Status {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// The daemon's answer as JSON: each VIP with its `counts`, and its
        /// `backends` where `listed`.
        #[arg(long)]
        json: bool,
        /// Only this VIP (by name), with every backend of it.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["all", "summary"])]
        vip: Option<String>,
        /// Every backend, however many there are.
        #[arg(long, conflicts_with = "summary")]
        all: bool,
        /// Each VIP's counts of backends, no backend listed.
        #[arg(long)]
        summary: bool,
    },
    /// A live view of every VIP and backend (rates, flows, health), refreshed
    /// every second; keys p/b/n/a sort, o file order, q quits.
    Top {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Print this many frames, one a second, as plain text, and exit
        /// (the default when the output is not a terminal: 1).
        #[arg(long)]
        iterations: Option<u32>,
    },
    /// Withdraw every VIP announcement (`announce` in the pool file) while
    /// the node keeps forwarding what still arrives, until `--undo` or a
    /// restart (`announce.drain: true` in the pool file lasts).
    DrainNode {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Announce again.
        #[arg(long)]
        undo: bool,
    },
    /// Detach XDP, remove the pinned maps and links, and stop the daemon.
    Stop {
        #[arg(long, short, required_unless_present = "instance")]
        config: Option<PathBuf>,
        /// The instance to stop, without reading a pool file (e.g. when it
        /// no longer parses); its control socket is /run/lb/<instance>.sock.
        #[arg(long, conflicts_with = "config")]
        instance: Option<String>,
    },
    /// On a backend: attach the decapsulator to an interface for the given VIPs (pinned; stays after exit).
    Decap {
        #[arg(long, short)]
        interface: String,
        /// A VIP whose tunnelled packets are unwrapped, as in the pool
        /// file: `ADDRESS:PORT/PROTOCOL` (`10.100.0.1:80/tcp`,
        /// `[fd00:100::1]:53/udp`; port 0: every port). Repeat for several.
        /// Tunnels to other ports or protocols of these addresses are
        /// dropped: they would reach other services past the balancer.
        #[arg(long = "vip", value_parser = parse_decap_vip)]
        vips: Vec<dataplane::DecapVip>,
        /// Outer source prefix tunnels are accepted from: the balancers'
        /// `encapsulation.source_v4`/`source_v6` (repeat for several), or
        /// `any` to accept tunnels from every source. Required: a tunnel
        /// from anywhere reaches every service on the backend past the
        /// balancer.
        #[arg(long = "from", value_parser = parse_source)]
        sources: Vec<DecapFrom>,
        /// The UDP port GUE tunnels come to (the balancers'
        /// `encapsulation.gue_port`); 0: take no GUE.
        #[arg(long, default_value_t = lb_common::DEFAULT_GUE_PORT)]
        gue_port: u16,
        #[arg(long, value_enum, default_value = "auto")]
        mode: Mode,
        /// Detach and remove instead.
        #[arg(long)]
        remove: bool,
        #[arg(long)]
        ebpf_object: Option<PathBuf>,
    },
}

/// Which running daemon a command talks to: by pool file, control socket
/// or instance name.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The daemon's pool file (its control socket).
    #[arg(long, short, conflicts_with_all = ["socket", "instance"])]
    config: Option<PathBuf>,
    /// Control socket (default /run/lb/lb0.sock, or the pool file's).
    #[arg(long, conflicts_with = "instance")]
    socket: Option<PathBuf>,
    /// The instance whose daemon to ask (its socket /run/lb/NAME.sock).
    #[arg(long)]
    instance: Option<String>,
}

/// How `lb run` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A `--from` of `lb decap`: prefixes tunnels are accepted from.
#[derive(Clone, Debug)]
struct DecapFrom(Vec<(std::net::IpAddr, u8)>);

/// `any`, or `ADDRESS/BITS` (a bare address is a single host).
fn parse_source(s: &str) -> std::result::Result<DecapFrom, String> {
    if s == "any" {
        let v4 = std::net::IpAddr::from([0u8; 4]);
        let v6 = std::net::IpAddr::from([0u8; 16]);
        return Ok(DecapFrom(vec![(v4, 0), (v6, 0)]));
    }
    parse_prefix(s).map(|p| DecapFrom(vec![p]))
}

/// `ADDRESS:PORT/PROTOCOL`, an IPv6 address in brackets.
fn parse_decap_vip(s: &str) -> std::result::Result<dataplane::DecapVip, String> {
    let form = "give a VIP as ADDRESS:PORT/PROTOCOL, e.g. 10.100.0.1:80/tcp or \
                [fd00:100::1]:53/udp (port 0: every port)";
    let (sa, proto) = s.rsplit_once('/').ok_or_else(|| format!("`{s}`: {form}"))?;
    let proto = match proto {
        "tcp" => lb_common::PROTO_TCP,
        "udp" => lb_common::PROTO_UDP,
        p => return Err(format!("`{p}` is not a protocol (tcp or udp)")),
    };
    let sa: std::net::SocketAddr = sa.parse().map_err(|_| format!("`{s}`: {form}"))?;
    Ok(dataplane::DecapVip {
        addr: sa.ip(),
        port: sa.port(),
        proto,
    })
}

/// `ADDRESS/BITS` (a bare address is a single host).
fn parse_prefix(s: &str) -> std::result::Result<(std::net::IpAddr, u8), String> {
    let (a, p) = s.split_once('/').unwrap_or((s, ""));
    let addr: std::net::IpAddr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = if p.is_empty() {
        max
    } else {
        p.parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("`{p}` is not a prefix length from 0 to {max}"))?
    };
    Ok((addr, bits))
}

static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

fn object(path: Option<&Path>) -> Result<Vec<u8>> {
    if let Some(p) = path {
        return std::fs::read(p)
            .with_context(|| format!("reading the eBPF object {}", p.display()));
    }
    if EMBEDDED.is_empty() {
        bail!("this `lb` was built without the eBPF object; build it with `cargo xtask run` (or `cargo xtask build-ebpf` before `cargo build`), or pass --ebpf-object PATH");
    }
    Ok(EMBEDDED.to_vec())
}

fn load_pool(path: &Path) -> Result<config::Pool> {
    config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn main() {
    let cli = Cli::parse();
    let mut log =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    log.format_timestamp_millis();
    if let Cmd::Run {
        log_format: LogFormat::Json,
        ..
    } = &cli.cmd
    {
        // One JSON object a line, for log shippers.
        log.format(|buf, r| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": r.level().as_str(),
                "target": r.target(),
                "msg": r.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    log.init();
    if matches!(
        cli.cmd,
        Cmd::Status { .. } | Cmd::Validate { .. } | Cmd::Top { .. }
    ) {
        // Printing into a pipe that closed (`lb status | head`) ends the
        // command quietly, as for any Unix tool, not with a panic. (The
        // daemons keep Rust's default: a client that hangs up is an error
        // on that socket only.)
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(real_main(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run {
            config,
            ebpf_object,
            debug_datapath,
            ..
        } => daemon::run(config, object(ebpf_object.as_deref())?, debug_datapath).await,
        Cmd::Validate { file } => {
            let pool = load_pool(&file)?;
            let backends: usize = pool.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: ok ({} VIPs, {} backends)",
                file.display(),
                pool.vips.len(),
                backends
            );
            Ok(())
        }
        Cmd::Status {
            daemon: d,
            json,
            vip,
            all,
            summary,
        } => {
            let (sock, instance) = control_socket(d.config, d.socket, d.instance)?;
            let scope = match (vip, all, summary) {
                (Some(name), _, _) => status::Scope::Vip(name),
                (None, true, _) => status::Scope::All,
                (None, false, true) => status::Scope::Summary,
                (None, false, false) => status::Scope::Default,
            };
            let answer = match daemon::request(&sock, &scope.request()).await {
                Ok(a) => a,
                Err(e) if e.is::<daemon::Denied>() => return Err(e),
                Err(e) => match instance {
                    Some(i) if dataplane::has_pins(&i) => bail!(
                        "{e:#}; instance `{i}` is still pinned under {}, so its XDP program keeps forwarding with the last tables, but nothing probes health or applies changes: start `lb run` again (it adopts the pinned state) or detach with `lb stop`",
                        dataplane::pin_dir(&i).display()
                    ),
                    _ => return Err(e),
                },
            };
            // An error is all the answer says (a status starts with its
            // instance): no parse of a large answer to find out.
            if answer.starts_with("{\"error\"") {
                let v: serde_json::Value = serde_json::from_str(&answer)?;
                bail!("{}", v["error"].as_str().unwrap_or(&answer));
            }
            if json {
                print!("{answer}");
            } else {
                let s: status::Status =
                    serde_json::from_str(&answer).context("reading the daemon's answer")?;
                print!("{}", status::render(&s));
            }
            Ok(())
        }
        Cmd::Top {
            daemon: d,
            iterations,
        } => {
            let (sock, _) = control_socket(d.config, d.socket, d.instance)?;
            top(&sock, iterations).await
        }
        Cmd::DrainNode { daemon: d, undo } => {
            let (sock, _) = control_socket(d.config, d.socket, d.instance)?;
            let answer = daemon::request(&sock, if undo { "undrain" } else { "drain" }).await?;
            let v: serde_json::Value =
                serde_json::from_str(&answer).context("reading the daemon's answer")?;
            if let Some(e) = v["error"].as_str() {
                bail!("{e}");
            }
            if v["draining"].as_bool() == Some(true) {
                println!(
                    "draining: every VIP withdrawn from BIRD; the node keeps forwarding what arrives{}",
                    if undo { " (`announce.drain: true` in the pool file holds)" } else { "" }
                );
            } else {
                println!("announcing again: VIPs that take new flows are announced");
            }
            Ok(())
        }
        Cmd::Stop { config, instance } => {
            let (instance, socket, announce) = match (config, instance) {
                (Some(c), _) => {
                    let pool = load_pool(&c).map_err(|e| {
                        e.context("the pool file does not load; `lb stop --instance NAME` stops an instance without it")
                    })?;
                    (pool.instance, pool.control_socket, pool.announce)
                }
                (None, Some(i)) => {
                    let sock = PathBuf::from(format!("/run/lb/{i}.sock"));
                    // The default include, if this instance wrote one.
                    let include = PathBuf::from(format!("/run/bird/lb-{i}.conf"));
                    let announce = include.exists().then(|| config::Announce {
                        bird_include: include,
                        bird_socket: PathBuf::from(config::DEFAULT_BIRD_SOCKET),
                        drain: false,
                    });
                    (i, sock, announce)
                }
                (None, None) => unreachable!("clap requires one"),
            };
            if daemon::socket_alive(&socket).await {
                daemon::request(&socket, "stop").await?;
                println!("stopped instance `{instance}`");
            } else {
                // A daemon that exited left BIRD announcing: withdraw
                // before XDP goes.
                if let Some(a) = &announce {
                    match daemon::withdraw_stopped(a) {
                        Ok(()) => println!("withdrew every VIP from BIRD"),
                        Err(e) => eprintln!("warning: withdrawing the VIPs from BIRD: {e:#}"),
                    }
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                let removed = dataplane::remove_pins(&instance)?;
                println!(
                    "the daemon was not running; removed {} pins of instance `{instance}` (XDP detached)",
                    removed.len()
                );
            }
            Ok(())
        }
        Cmd::Decap {
            interface,
            vips,
            sources,
            gue_port,
            mode,
            remove,
            ebpf_object,
        } => {
            if remove {
                let was = dataplane::remove_decap(&interface)?;
                println!(
                    "{}",
                    if was {
                        "decapsulator removed"
                    } else {
                        "no decapsulator was attached"
                    }
                );
                return Ok(());
            }
            if vips.is_empty() {
                bail!("give at least one --vip ADDRESS:PORT/PROTOCOL (e.g. 10.100.0.1:80/tcp)");
            }
            if sources.is_empty() {
                bail!(
                    "give the balancers' source prefixes with --from (their \
                     encapsulation.source_v4 / source_v6, e.g. --from 10.255.0.0/24), or \
                     --from any to accept tunnels from every source: a tunnel from \
                     anywhere reaches every service on this backend past the balancer"
                );
            }
            let sources: Vec<(std::net::IpAddr, u8)> =
                sources.into_iter().flat_map(|f| f.0).collect();
            let any = sources.iter().any(|(_, bits)| *bits == 0);
            let mode = match mode {
                Mode::Auto => dataplane::AttachMode::Auto,
                Mode::Driver => dataplane::AttachMode::Driver,
                Mode::Generic => dataplane::AttachMode::Generic,
            };
            dataplane::attach_decap(
                &object(ebpf_object.as_deref())?,
                &interface,
                &vips,
                &sources,
                gue_port,
                mode,
            )?;
            let list: Vec<String> = vips.iter().map(|v| v.to_string()).collect();
            println!("lb_decap attached to `{interface}` for {}", list.join(", "));
            if any {
                println!("tunnels are accepted from any source (--from any, or a /0): filter IP protocols 4 and 41 upstream");
            } else {
                let list: Vec<String> = sources.iter().map(|(a, p)| format!("{a}/{p}")).collect();
                println!("tunnels are accepted from {}", list.join(", "));
            }
            Ok(())
        }
    }
}

/// The control socket `lb status` and `lb top` ask, and the instance when known.
fn control_socket(
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    instance: Option<String>,
) -> Result<(PathBuf, Option<String>)> {
    Ok(match (config, socket, instance) {
        (Some(c), _, _) => {
            let p = load_pool(&c)?;
            (p.control_socket, Some(p.instance))
        }
        (None, Some(s), _) => (s, None),
        (None, None, Some(i)) => (PathBuf::from(format!("/run/lb/{i}.sock")), Some(i)),
        (None, None, None) => (PathBuf::from("/run/lb/lb0.sock"), Some("lb0".into())),
    })
}

async fn snapshot(sock: &Path) -> Result<status::Status> {
    // Above `LIST_LIMIT` backends, VIPs only: a frame a second of every
    // backend would keep the daemon's main loop busy.
    let answer = daemon::request(sock, &status::Scope::Default.request()).await?;
    serde_json::from_str(&answer).context("reading the daemon's answer")
}

/// `lb top`: a full-screen view on a terminal (until `q`), else `iterations`
/// plain frames.
async fn top(sock: &Path, iterations: Option<u32>) -> Result<()> {
    use lb_userspace::top::{frame, SortBy};
    use std::io::{IsTerminal, Write};
    let mut prev = snapshot(sock).await?;
    let mut at = std::time::Instant::now();
    let plain = iterations.is_some() || !std::io::stdout().is_terminal();
    if plain {
        let n = iterations.unwrap_or(1).max(1);
        for i in 0..n {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let cur = snapshot(sock).await?;
            let secs = at.elapsed().as_secs_f64();
            at = std::time::Instant::now();
            if i > 0 {
                println!();
            }
            for l in frame(&cur, Some(&prev), secs, SortBy::File) {
                println!("{l}");
            }
            prev = cur;
        }
        return Ok(());
    }
    use crossterm::{cursor, event, execute, terminal};
    let mut out = std::io::stdout();
    terminal::enable_raw_mode()?;
    execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
    let result: Result<()> = async {
        let mut sort = SortBy::File;
        let mut next = std::time::Instant::now();
        loop {
            if std::time::Instant::now() >= next {
                let cur = snapshot(sock).await?;
                let secs = at.elapsed().as_secs_f64();
                at = std::time::Instant::now();
                execute!(
                    out,
                    cursor::MoveTo(0, 0),
                    terminal::Clear(terminal::ClearType::All)
                )?;
                for l in frame(&cur, Some(&prev), secs, sort) {
                    write!(out, "{l}\r\n")?;
                }
                out.flush()?;
                prev = cur;
                next = at + std::time::Duration::from_secs(1);
            }
            if event::poll(std::time::Duration::from_millis(100))? {
                if let event::Event::Key(k) = event::read()? {
                    match k.code {
                        event::KeyCode::Char('q') | event::KeyCode::Esc => return Ok(()),
                        event::KeyCode::Char('c')
                            if k.modifiers.contains(event::KeyModifiers::CONTROL) =>
                        {
                            return Ok(())
                        }
                        event::KeyCode::Char(c) => {
                            if let Some(s) = SortBy::from_key(c) {
                                sort = s;
                                next = std::time::Instant::now();
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    .await;
    let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
    result
}

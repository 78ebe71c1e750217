//! The control socket: `lb status` and `lb stop` talk to the daemon over
//! it, root only.
use super::*;

/// The control socket's path must be free or hold a socket (a stale one
/// of an earlier run, removed at bind): anything else is not ours to delete.
pub(super) fn check_socket_path(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => bail!(
            "{} exists and is not a socket; the daemon does not delete it: move it away, \
             or set `control_socket` to another path",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Binds the control socket, readable and writable by its owner (root)
/// only: `stop` and `status` are for root, and the daemon also checks
/// each peer's credentials.
pub(super) fn bind_control_socket(path: &Path) -> Result<UnixListener> {
    check_socket_path(path)?;
    let _ = std::fs::remove_file(path);
    // The socket is made with the mode the umask leaves: no window in which
    // others could connect.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Whether a control-socket peer may talk to the daemon: root, or the
/// daemon's own user.
pub(super) fn peer_allowed(stream: &UnixStream) -> bool {
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == 0 || c.uid() == me)
}

/// Is a daemon answering on this control socket? (One that refuses us
/// is there: `request` then says permission denied.)
pub async fn socket_alive(path: &Path) -> bool {
    match UnixStream::connect(path).await {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

/// The control socket refused us: only root talks to the daemon.
#[derive(Debug, thiserror::Error)]
#[error(
    "permission denied on the control socket {}: only root talks to the daemon; run this with sudo",
    .0.display()
)]
pub struct Denied(pub PathBuf);

/// Sends one request line to the daemon and returns its answer.
pub async fn request(path: &Path, what: &str) -> Result<String> {
    let mut s = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Denied(path.to_path_buf()).into())
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "the daemon is not running (nothing answers on {})",
                    path.display()
                )
            })
        }
    };
    s.write_all(format!("{what}\n").as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    Ok(line)
}

pub(super) enum Control {
    Status(Scope, tokio::sync::oneshot::Sender<String>),
    Stop(tokio::sync::oneshot::Sender<String>),
    /// A scrape of the metrics endpoint.
    Metrics(tokio::sync::oneshot::Sender<String>),
    /// `lb drain-node` (true: `--undo`).
    Drain(bool, tokio::sync::oneshot::Sender<String>),
}

pub(super) async fn serve_control(listener: UnixListener, tx: mpsc::Sender<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let allowed = peer_allowed(&stream);
            let (r, mut w) = stream.into_split();
            if !allowed {
                let _ = w
                    .write_all(
                        b"{\"error\":\"permission denied: only root talks to the daemon\"}\n",
                    )
                    .await;
                return;
            }
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let (otx, orx) = tokio::sync::oneshot::channel();
            let msg = match line.trim() {
                l if Scope::parse(l).is_some() => Control::Status(Scope::parse(l).unwrap(), otx),
                "stop" => Control::Stop(otx),
                "drain" => Control::Drain(false, otx),
                "undrain" => Control::Drain(true, otx),
                other => {
                    let _ = w
                        .write_all(
                            format!("{{\"error\":\"unknown request {other:?}\"}}\n").as_bytes(),
                        )
                        .await;
                    return;
                }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            if let Ok(answer) = orx.await {
                let _ = w.write_all(answer.as_bytes()).await;
                let _ = w.write_all(b"\n").await;
            }
        });
    }
}

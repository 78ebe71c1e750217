//! The flow-hash secret: created once, shared by every node of an ECMP
//! group.
use super::*;

/// Reads the hash secret, or creates it (16 random bytes, hex, mode 0600).
pub fn load_or_create_secret(path: &Path) -> Result<[u64; 2]> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut buf = [0u8; 16];
            crate::dataplane::urandom(&mut buf).context("reading /dev/urandom")?;
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating the hash secret {}", path.display()))?;
            use std::io::Write;
            writeln!(f, "{hex}")?;
            log::info!(
                "created a new hash secret in {}; copy it to every node of the same ECMP group",
                path.display()
            );
            hex
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the hash secret {}", path.display()))
        }
    };
    let hex = text.trim();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "hash secret {}: expected 32 hex digits, found {:?}",
            path.display(),
            hex
        );
    }
    let a = u64::from_str_radix(&hex[..16], 16)?;
    let b = u64::from_str_radix(&hex[16..], 16)?;
    Ok([a, b])
}

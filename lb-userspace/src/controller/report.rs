//! What one `apply` changed, for the log.

/// What one `apply` changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: Vec<String>,
    pub vips_removed: Vec<String>,
    pub tables_written: Vec<String>,
}

impl ApplyReport {
    /// What changed, for the log ("no change" when nothing did).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("VIPs added", &self.vips_added),
            ("VIPs removed", &self.vips_removed),
            (
                "tables rewritten (backends, weights or states changed)",
                &self.tables_written,
            ),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(what, v)| format!("{what}: {}", v.join(", ")))
        .collect();
        if parts.is_empty() {
            "no change to VIPs or tables".into()
        } else {
            parts.join("; ")
        }
    }
}

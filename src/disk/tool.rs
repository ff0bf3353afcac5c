//! Running xfsprogs for the backing image. Programs, not syscalls, so they stay outside `Sys`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::error::{DiskError, Result};

/// Run `tool args… path` with no stdin; a non-zero exit becomes `ToolFailed` with the output.
pub(super) fn run_ok(tool: &'static str, args: &[&str], path: &Path) -> Result<()> {
    let started = Instant::now();
    let output = Command::new(tool)
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskError::ToolMissing { tool, source })?;
    tracing::debug!(tool, ?args, ?path, status = %output.status, elapsed = ?started.elapsed(), "ran tool");
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(DiskError::ToolFailed {
        tool,
        path: path.to_owned(),
        status: output.status,
        output: text.trim_end().to_owned(),
    })
}

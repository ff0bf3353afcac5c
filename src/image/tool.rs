//! Running e2fsprogs tools. They are programs, not syscalls, so they run as child processes
//! (and so stay outside `Sys`); their combined output goes into the error when they fail.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use super::error::{ImageError, Result};

/// Run `tool args… path` to completion with no stdin (none of them may prompt).
pub(crate) fn run(tool: &'static str, args: &[&str], path: &Path) -> Result<Output> {
    let started = Instant::now();
    let output = Command::new(tool)
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::ToolMissing { tool, source })?;
    tracing::debug!(tool, ?args, ?path, status = %output.status, elapsed = ?started.elapsed(), "ran tool");
    Ok(output)
}

pub(crate) fn combined_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.trim_end().to_owned()
}

/// Run and turn a non-zero exit into `ToolFailed`.
pub(super) fn run_ok(tool: &'static str, args: &[&str], path: &Path) -> Result<()> {
    let output = run(tool, args, path)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ImageError::ToolFailed {
            tool,
            path: path.to_owned(),
            status: output.status,
            output: combined_output(&output),
        })
    }
}

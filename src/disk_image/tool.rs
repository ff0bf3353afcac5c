//! Running xfsprogs for the backing image. Programs, not syscalls, so they stay outside `Sys`;
//! spawning and logging are image's, the errors are this module's.

use std::path::Path;

use super::error::{DiskError, Result};
use crate::image::{tool, ImageError};

/// Run `tool args… path` with no stdin; a non-zero exit becomes `ToolFailed` with the output.
pub(super) fn run_ok(name: &'static str, args: &[&str], path: &Path) -> Result<()> {
    let output = tool::run(name, args, path).map_err(|e| match e {
        ImageError::ToolMissing { tool, source } => DiskError::ToolMissing { tool, source },
        other => DiskError::io("run", path, std::io::Error::other(other.to_string())),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(DiskError::ToolFailed {
        tool: name,
        path: path.to_owned(),
        status: output.status,
        output: tool::combined_output(&output),
    })
}

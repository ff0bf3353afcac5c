//! The real `Sys`: loop ioctls, mount(2), FICLONE.

/// Performs the operations against the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

//! A recording `Sys` for tests that must not need root.

/// Records every call and pretends it succeeded.
#[derive(Debug, Default)]
pub struct FakeSys;

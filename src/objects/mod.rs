//! The objects the front doors and the daemon share: the `imagecache.io/v1` resources and the
//! validated requests an `Action` carries. They sit below both, so the dependency graph runs
//! one way (front doors → daemon → core) and no protocol leaks into the daemon.

mod requests;
mod resources;

pub use requests::{ValidDisk, ValidImageCache};
pub use resources::*;

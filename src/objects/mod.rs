//! The objects the front doors and the daemon share: the `imagecache.io/v1` resources and the
//! validated requests an `Action` carries. They sit below both, so the dependency graph runs
//! one way (front doors → daemon → core) and no protocol leaks into the daemon.

mod event_source;
mod requests;
mod resources;

pub use event_source::{node_name, stamp_events, EventSource, InvolvedObject, EVENT_COMPONENT};

pub use requests::{ValidDisk, ValidImageCache};
pub use resources::*;

//! The HTTP+JSON API over the unix socket. This layer parses and validates requests and turns
//! each into one `daemon::Action`; it never touches the disk.

pub mod error;
pub mod parse;
pub mod peer;
pub mod routes;
pub mod validate;
pub mod validate_disk;

pub use error::{ApiError, Status};
// The resources are the daemon's as much as ours; re-exported so clients keep one path.
pub use crate::objects::*;

//! Per-entry filesystem calls made beneath a directory fd.

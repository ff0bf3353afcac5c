//! Timestamps in the Kubernetes form (RFC 3339, UTC, whole seconds), and in containerd's
//! (Unix nanoseconds) for the snapshotter's records.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
}

/// Now in Unix nanoseconds, uncut: containerd's snapshot infos carry nanoseconds, and its
/// snapshotter suite checks a snapshot's created and updated times against its own clock
/// read just before and after the request.
pub fn now_nanos() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub fn format(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("UTC times always format as RFC 3339")
}

pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub fn now_string() -> String {
    format(now())
}

/// Bytes in binary units with one decimal, as the events and `dataSize` show them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Decimal megabytes, as container runtimes report pulled sizes ("131 MB").
pub fn human_mb(bytes: u64) -> String {
    if bytes >= 10_000_000 {
        format!("{} MB", bytes / 1_000_000)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_and_sizes_read_well() {
        let t = now();
        assert_eq!(parse(&format(t)), Some(t));
        assert!(format(t).ends_with('Z'));
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(450 * 1024 * 1024), "450.0 MiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
        assert_eq!(human_mb(131_000_000), "131 MB");
        assert_eq!(human_mb(1_234_567), "1.2 MB");
    }
}

//! The symbolic names of the errnos an operator meets around loop devices and mounts, so
//! messages can say `ENOSPC` (what `man 4 loop` and the kernel sources say) beside the C
//! library's sentence, and the fault variable can name the errno to inject.

use rustix::io::Errno;

const NAMES: &[(&str, Errno)] = &[
    ("EBUSY", Errno::BUSY),
    ("ENOSPC", Errno::NOSPC),
    ("ENODEV", Errno::NODEV),
    ("ENXIO", Errno::NXIO),
    ("ENOENT", Errno::NOENT),
    ("ENOMEM", Errno::NOMEM),
    ("EIO", Errno::IO),
    ("EPERM", Errno::PERM),
    ("EACCES", Errno::ACCESS),
    ("EAGAIN", Errno::AGAIN),
    ("EINVAL", Errno::INVAL),
    ("ENOTTY", Errno::NOTTY),
];

/// `ENOSPC` for `Errno::NOSPC`; `None` for an errno outside the table.
pub fn name(errno: Errno) -> Option<&'static str> {
    NAMES.iter().find(|(_, e)| *e == errno).map(|(n, _)| *n)
}

/// The name of the raw errno `raw`, or `errno <raw>`.
pub fn name_of_raw(raw: i32) -> String {
    name(Errno::from_raw_os_error(raw)).map_or_else(|| format!("errno {raw}"), str::to_owned)
}

/// `Errno::NOSPC` for `ENOSPC`; `None` for a name outside the table.
pub fn parse(name: &str) -> Option<Errno> {
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, e)| *e)
}

/// Every name [`parse`] knows, for an error listing them.
pub fn known() -> impl Iterator<Item = &'static str> {
    NAMES.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in known() {
            assert_eq!(name(parse(n).unwrap()), Some(n));
        }
        assert_eq!(name_of_raw(28), "ENOSPC");
        assert_eq!(name_of_raw(16), "EBUSY");
        assert_eq!(name_of_raw(4095), "errno 4095");
        assert_eq!(parse("enospc"), None);
    }
}

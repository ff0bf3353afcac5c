//! The supplementary groups of a unix socket's peer (SO_PEERGROUPS).
//!
//! The kernel records the connecting process's credentials on the socket when it calls
//! connect(2) and never changes them: what this returns is who connected, not who holds that
//! pid now. `/proc/<pid>/status` would be read later, from a pid the peer may have left (it
//! exited, or passed the socket on) and another process may have taken.
//!
//! A plain function rather than a `Sys` method: it is asked once per API connection from
//! axum's `Connected::connect_info`, which is handed the stream and nothing else (no state to
//! carry a `Sys` through), and it only reads the connection the daemon was given; nothing on
//! the node changes. rustix 1 has no SO_PEERGROUPS, so the call goes through libc.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Groups asked for on the first try; enough for almost every caller. The kernel answers
/// ERANGE with the size it needs when there are more, and the second try asks for that.
const FIRST_GUESS: usize = 32;

/// The peer's supplementary group ids, as the kernel saw them at connect time (translated into
/// this process's user namespace). ENODATA when the socket has no peer credentials.
pub fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; FIRST_GUESS];
    loop {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))?;
        // SAFETY: `groups` is a writable buffer of `len` bytes that outlives the call, and
        // `len` is a valid socklen_t the kernel updates with the bytes written (or needed).
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // The credentials are fixed at connect time, so the size asked for the second time
        // fits; the length check keeps a kernel that answered otherwise from looping here.
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// setgroups(2) for the calling thread only. glibc's setgroups changes every thread of the
    /// process; the raw syscall changes just this one, so the test harness's other threads keep
    /// their groups.
    fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `groups`, which the kernel only reads.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[test]
    fn reads_the_groups_the_peer_had_when_it_connected() {
        // More groups than the first guess, so the ERANGE retry is taken too.
        let wanted: Vec<u32> = (0..FIRST_GUESS as u32 + 8).map(|i| 70_000 + i).collect();
        let expected = wanted.clone();
        let (ours, theirs) = std::thread::spawn(move || {
            if let Err(e) = set_thread_groups(&wanted) {
                panic!("setgroups needs root (CAP_SETGID), as the daemon's tests run: {e}");
            }
            let pair = UnixStream::pair().unwrap();
            // The peer drops its groups after connecting: the socket keeps the old ones.
            set_thread_groups(&[]).unwrap();
            pair
        })
        .join()
        .unwrap();
        assert_eq!(peer_groups(ours.as_fd()).unwrap(), expected);
        assert_eq!(peer_groups(theirs.as_fd()).unwrap(), expected);
    }

    #[test]
    fn a_socket_without_a_peer_has_no_groups() {
        let unconnected = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let err = peer_groups(unconnected.as_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODATA), "{err}");
    }
}

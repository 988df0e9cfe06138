//! Waiting for file descriptors with a timeout, so blocked threads notice shutdown.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

fn wait(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd on the stack, length 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

/// Waits until `fd` is readable or `timeout` passes. True when readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    wait(fd, libc::POLLIN, timeout)
}

/// Waits until `fd` is writable or `timeout` passes. True when writable.
pub fn wait_writable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    wait(fd, libc::POLLOUT, timeout)
}

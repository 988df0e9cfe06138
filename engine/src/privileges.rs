//! `user` / `group`: giving up root once the tunnel is set up, as OpenVPN does.
//!
//! The server needs nothing privileged after setup (tun, routes, sockets and capture exist),
//! so every thread becomes the user with no capabilities. The client must still change
//! routes and DNS when it reconnects or exits, so the thread that does that — the one calling
//! [`drop_keeping_net_admin`] — keeps `CAP_NET_ADMIN` (routes, tun) and
//! `CAP_NET_BIND_SERVICE` (the DNS stub's port 53) and nothing else; every other thread,
//! the data path's included, has no capability at all. Files root owns (resolv.conf, the
//! state directory) are opened or handed over before, so nothing needs `CAP_DAC_OVERRIDE`.

use std::ffi::CString;
use std::io;

use anyhow::{Context, Result, bail};

/// Whom to become.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// As written in the config (for messages).
    pub name: String,
}

/// Resolves `user` / `group` (names or numbers). `None` when neither is given. Without
/// `group`, the user's primary group.
pub fn lookup(user: Option<&str>, group: Option<&str>) -> Result<Option<Target>> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    // SAFETY: getuid/getgid have no preconditions.
    let (mut uid, mut gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut name = String::new();
    if let Some(u) = user {
        let (pw_uid, pw_gid) = passwd(u).with_context(|| format!("user '{u}'"))?;
        uid = pw_uid;
        gid = pw_gid;
        name = u.to_owned();
    }
    if let Some(g) = group {
        gid = group_id(g).with_context(|| format!("group '{g}'"))?;
        name = format!("{name}:{g}");
    }
    Ok(Some(Target { uid, gid, name }))
}

fn passwd(user: &str) -> Result<(u32, u32)> {
    if let Ok(n) = user.parse::<u32>() {
        return Ok((n, n));
    }
    let c = CString::new(user).context("a NUL in the name")?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pw's strings.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        bail!("no such user");
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

fn group_id(group: &str) -> Result<u32> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    let c = CString::new(group).context("a NUL in the name")?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed group is a valid out-parameter for getgrnam_r.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        bail!("no such group");
    }
    Ok(gr.gr_gid)
}

fn check(r: libc::c_int, what: &str) -> Result<()> {
    if r != 0 {
        return Err(io::Error::last_os_error()).with_context(|| what.to_owned());
    }
    Ok(())
}

/// Becomes `t` in every thread (glibc applies set*id to all threads), with no capability
/// left; checks that root cannot be regained.
pub fn drop_all(t: &Target) -> Result<()> {
    become_target(t)?;
    // SAFETY: setuid(0) is a plain syscall; it must fail now.
    if unsafe { libc::setuid(0) } == 0 {
        bail!("root could be regained after dropping privileges");
    }
    Ok(())
}

/// Becomes `t` in every thread; the calling thread alone keeps `CAP_NET_ADMIN` and
/// `CAP_NET_BIND_SERVICE`.
pub fn drop_keeping_net_admin(t: &Target) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) },
        "PR_SET_KEEPCAPS",
    )?;
    become_target(t)?;
    // SAFETY: as above.
    check(
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) },
        "PR_SET_KEEPCAPS",
    )?;
    let keep: u32 = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE);
    set_caps(keep, keep)
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets this thread's effective and permitted capabilities (the first 32; the rest none).
fn set_caps(effective: u32, permitted: u32) -> Result<()> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective,
            permitted,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: header and two data words as capset(2) wants for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

fn become_target(t: &Target) -> Result<()> {
    let groups = [t.gid as libc::gid_t];
    // SAFETY: one valid gid.
    check(unsafe { libc::setgroups(1, groups.as_ptr()) }, "setgroups")?;
    // SAFETY: plain syscalls (glibc runs them in every thread).
    check(unsafe { libc::setgid(t.gid) }, "setgid")?;
    check(unsafe { libc::setuid(t.uid) }, "setuid")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(lookup(None, None).expect("none"), None);
        let root = lookup(Some("root"), None).expect("root").expect("some");
        assert_eq!((root.uid, root.gid), (0, 0));
        let n = lookup(Some("65534"), Some("65534"))
            .expect("n")
            .expect("some");
        assert_eq!((n.uid, n.gid), (65534, 65534));
        assert!(lookup(Some("no-such-user-here"), None).is_err());
        assert!(lookup(None, Some("no-such-group-here")).is_err());
    }
}

//! Client verification for the server: the `auth-user-pass-verify` script and the
//! `client-config-dir` file, run off the control thread (a script may take its time).

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tunscope_proto::options::server::{ClientOverrides, ScriptMethod, ServerConfig};
use tunscope_proto::server::{AuthResult, PeerAddr};

/// What the verifier needs to know about a client.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    /// Certificate CN (or username).
    pub common_name: Option<String>,
    /// Username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Transport address.
    pub addr: PeerAddr,
    /// Real remote address of a TCP connection (for the script environment).
    pub remote: Option<std::net::SocketAddr>,
}

/// A script may run this long before it counts as a refusal.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Verifies a client: ccd file first (a `disable`d client needs no password check), then the
/// script. Never panics; every failure is a refusal with a reason.
pub fn verify(cfg: &ServerConfig, dev: &str, req: &AuthRequest) -> AuthResult {
    let overrides = match read_ccd(cfg, req.common_name.as_deref()) {
        Ok(o) => o,
        Err(reason) => {
            return AuthResult {
                ok: false,
                reason: Some(reason),
                overrides: None,
            };
        }
    };
    if let Some(script) = &cfg.auth_script {
        let (Some(user), Some(pass)) = (&req.username, &req.password) else {
            return refuse("no username/password sent (auth-user-pass-verify is configured)");
        };
        if let Err(reason) = run_script(&script.command, script.method, dev, user, pass, req) {
            return refuse(&reason);
        }
    }
    AuthResult {
        ok: true,
        reason: None,
        overrides,
    }
}

fn refuse(why: &str) -> AuthResult {
    AuthResult {
        ok: false,
        reason: Some(why.to_owned()),
        overrides: None,
    }
}

/// Files of `client-config-dir` read at start, at most (a directory that big is a mistake).
const MAX_CCD_FILES: usize = 100_000;
/// A ccd file bigger than this is not read at start (it is refused when its client comes).
const MAX_CCD_BYTES: u64 = 64 * 1024;

/// The fixed addresses (`ifconfig-push`, `ifconfig-ipv6-push`) named in the
/// `client-config-dir` files, read at start so dynamic leases never hand them out. A file
/// that does not parse is skipped with a warning; its client gets the error when it comes.
pub fn ccd_reservations(cfg: &ServerConfig) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let Some(dir) = &cfg.client_config_dir else {
        return (v4, v6);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("client-config-dir {}: {e}", dir.display());
            return (v4, v6);
        }
    };
    for entry in entries.flatten().take(MAX_CCD_FILES) {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let small = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_CCD_BYTES);
        if hidden || !small {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match ClientOverrides::parse(&text, &path) {
            Ok(o) => {
                v4.extend(o.ifconfig_push);
                v6.extend(o.ifconfig_ipv6_push);
            }
            Err(e) => tracing::warn!("{e} (its client will be refused)"),
        }
    }
    (v4, v6)
}

fn read_ccd(cfg: &ServerConfig, cn: Option<&str>) -> Result<Option<ClientOverrides>, String> {
    let Some(dir) = &cfg.client_config_dir else {
        return Ok(None);
    };
    let Some(cn) = cn.filter(|c| !c.contains('/') && !c.starts_with('.')) else {
        return if cfg.ccd_exclusive {
            Err("ccd-exclusive: client has no usable common name".into())
        } else {
            Ok(None)
        };
    };
    let path = dir.join(cn);
    match std::fs::read_to_string(&path) {
        Ok(text) => ClientOverrides::parse(&text, &path)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if cfg.ccd_exclusive {
                Err(format!("ccd-exclusive: no file {}", path.display()))
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn run_script(
    command: &[String],
    method: ScriptMethod,
    dev: &str,
    user: &str,
    pass: &str,
    req: &AuthRequest,
) -> Result<(), String> {
    let Some((prog, args)) = command.split_first() else {
        return Err("empty auth-user-pass-verify command".into());
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .env("script_type", "user-pass-verify")
        .env("dev", dev)
        .env("common_name", req.common_name.as_deref().unwrap_or("UNDEF"));
    if let Some(r) = req.remote.or(match req.addr {
        PeerAddr::Udp(a) => Some(a),
        PeerAddr::Tcp(_) => None,
    }) {
        cmd.env("untrusted_ip", r.ip().to_string())
            .env("untrusted_port", r.port().to_string());
    }
    let mut tmp = None;
    match method {
        ScriptMethod::ViaEnv => {
            cmd.env("username", user).env("password", pass);
        }
        ScriptMethod::ViaFile => {
            let path = std::env::temp_dir().join(format!(
                "tunscope-auth-{}-{}",
                std::process::id(),
                aws_unique()
            ));
            write_private(&path, &format!("{user}\n{pass}\n"))
                .map_err(|e| format!("auth file: {e}"))?;
            cmd.arg(&path);
            tmp = Some(path);
        }
    }
    let result = (|| {
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(format!("auth-user-pass-verify refused ({st})")),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("auth-user-pass-verify timed out".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("auth-user-pass-verify: {e}")),
            }
        }
    })();
    if let Some(p) = tmp {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn aws_unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(script: &Path, method: &str, ccd: Option<&Path>) -> ServerConfig {
        let mut text = format!(
            "ca ca\ncert c\nkey k\ndh none\nserver 198.19.0.0 255.255.255.0\ntopology subnet\nscript-security 2\nauth-user-pass-verify {} {method}\n",
            script.display()
        );
        if let Some(d) = ccd {
            text.push_str(&format!(
                "client-config-dir {}\nccd-exclusive\n",
                d.display()
            ));
        }
        ServerConfig::parse(&text, Path::new("/t/s.conf")).expect("config")
    }

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tunscope-auth-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    /// The fixed addresses of every ccd file, read at start; broken, hidden and huge files
    /// are skipped.
    #[test]
    fn ccd_reservations_are_read_at_start() {
        let dir = scratch("ccd-reserve");
        let ccd = dir.join("ccd");
        std::fs::create_dir_all(&ccd).expect("dir");
        std::fs::write(
            ccd.join("alice"),
            "ifconfig-push 198.19.0.3 255.255.255.0\n",
        )
        .expect("w");
        std::fs::write(
            ccd.join("bob"),
            "ifconfig-ipv6-push 2001:db8::33/64\niroute 198.19.9.0 255.255.255.0\n",
        )
        .expect("w");
        std::fs::write(ccd.join("broken"), "ifconfig-push nonsense\n").expect("w");
        std::fs::write(
            ccd.join(".hidden"),
            "ifconfig-push 198.19.0.9 255.255.255.0\n",
        )
        .expect("w");
        let huge = format!(
            "ifconfig-push 198.19.0.8 255.255.255.0\n#{}\n",
            "x".repeat(70_000)
        );
        std::fs::write(ccd.join("huge"), huge).expect("w");
        let cfg = config(&dir.join("none.sh"), "via-env", Some(&ccd));
        let (v4, v6) = ccd_reservations(&cfg);
        assert_eq!(v4, vec!["198.19.0.3".parse::<Ipv4Addr>().expect("ip")]);
        assert_eq!(v6, vec!["2001:db8::33".parse::<Ipv6Addr>().expect("ip")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("check.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn req(user: &str, pass: &str, cn: &str) -> AuthRequest {
        AuthRequest {
            common_name: Some(cn.into()),
            username: Some(user.into()),
            password: Some(pass.into()),
            addr: PeerAddr::Udp("198.18.1.2:5000".parse().expect("addr")),
            remote: None,
        }
    }

    #[test]
    fn via_env_and_via_file() {
        let d = scratch("methods");
        let s = script(
            &d,
            "[ \"$username\" = bob ] && [ \"$password\" = pw ] && [ \"$common_name\" = c1 ] && [ \"$untrusted_ip\" = 198.18.1.2 ]",
        );
        let cfg = config(&s, "via-env", None);
        assert!(verify(&cfg, "tun0", &req("bob", "pw", "c1")).ok);
        assert!(!verify(&cfg, "tun0", &req("bob", "nope", "c1")).ok);
        let s = script(
            &d,
            "[ \"$(sed -n 1p \"$1\")\" = bob ] && [ \"$(sed -n 2p \"$1\")\" = pw ]",
        );
        let cfg = config(&s, "via-file", None);
        assert!(verify(&cfg, "tun0", &req("bob", "pw", "c1")).ok);
        let r = verify(&cfg, "tun0", &req("eve", "pw", "c1"));
        assert!(
            !r.ok && r.reason.as_deref().is_some_and(|w| w.contains("refused")),
            "{r:?}"
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn ccd_exclusive_and_bad_ccd_files() {
        let d = scratch("ccd");
        let ccd = d.join("ccd");
        std::fs::create_dir_all(&ccd).expect("dir");
        std::fs::write(ccd.join("c1"), "ifconfig-push 198.19.0.9 255.255.255.0\n").expect("write");
        std::fs::write(ccd.join("c2"), "frobnicate\n").expect("write");
        let s = script(&d, "exit 0");
        let cfg = config(&s, "via-env", Some(&ccd));
        let ok = verify(&cfg, "tun0", &req("u", "p", "c1"));
        assert!(ok.ok);
        assert_eq!(
            ok.overrides.and_then(|o| o.ifconfig_push),
            Some("198.19.0.9".parse().expect("ip"))
        );
        let bad = verify(&cfg, "tun0", &req("u", "p", "c2"));
        assert!(
            !bad.ok && bad.reason.as_deref().is_some_and(|r| r.contains("c2:1")),
            "{bad:?}"
        );
        let missing = verify(&cfg, "tun0", &req("u", "p", "c3"));
        assert!(!missing.ok, "ccd-exclusive refuses clients without a file");
        let sneaky = verify(&cfg, "tun0", &req("u", "p", "../c1"));
        assert!(!sneaky.ok, "path traversal in a common name");
        std::fs::remove_dir_all(&d).ok();
    }
}

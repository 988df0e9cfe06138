//! Reaching an OpenVPN server over TCP through a proxy: HTTP `CONNECT` (`http-proxy`, with
//! basic authentication) and SOCKS5 (`socks-proxy`, RFC 1928, with RFC 1929 username and
//! password). The proxy resolves the server's name. Replies are read with a bound: a hostile
//! or broken proxy gets an error, never a hang (the socket has a timeout) or a large buffer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tunscope_proto::options::client::{ProxyKind, ProxySettings};

/// Longest HTTP response header accepted from a proxy.
const MAX_HTTP_REPLY: usize = 8192;

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Connects to `proxy` (already resolved) and asks it for a tunnel to `host:port`.
/// `credentials` are the username and password for the proxy, when it needs them.
pub fn connect(
    settings: &ProxySettings,
    proxy: SocketAddr,
    host: &str,
    port: u16,
    credentials: Option<&(String, String)>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&proxy, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    match settings.kind {
        ProxyKind::Http => http_connect(&mut s, settings, host, port, credentials)?,
        ProxyKind::Socks5 => socks5_connect(&mut s, host, port, credentials)?,
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

fn http_connect(
    s: &mut TcpStream,
    settings: &ProxySettings,
    host: &str,
    port: u16,
    credentials: Option<&(String, String)>,
) -> io::Result<()> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!(
        "CONNECT {target} HTTP/{}\r\nHost: {target}\r\n",
        settings.http_version
    );
    if let Some(agent) = &settings.user_agent {
        req.push_str(&format!("User-Agent: {agent}\r\n"));
    }
    for (k, v) in &settings.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((user, pass)) = credentials {
        req.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            tunscope_proto::base64::encode(format!("{user}:{pass}").as_bytes())
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // Read the response header byte by byte: nothing after it may be consumed (the TLS
    // exchange follows on the same stream).
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HTTP_REPLY {
            return Err(err("http-proxy: reply header longer than 8 KiB"));
        }
        if s.read(&mut b)? == 0 {
            return Err(err(
                "http-proxy closed the connection before answering CONNECT",
            ));
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    match code {
        "200" => Ok(()),
        // 407 is the standard answer; some proxies (tinyproxy) say 401.
        "407" | "401" if credentials.is_some() => Err(err(format!(
            "http-proxy refused our credentials ({status})"
        ))),
        "407" | "401" => Err(err(format!(
            "http-proxy wants authentication ({status}): give http-proxy an auth file"
        ))),
        _ => Err(err(format!(
            "http-proxy refused CONNECT {target}: {status}"
        ))),
    }
}

fn socks5_connect(
    s: &mut TcpStream,
    host: &str,
    port: u16,
    credentials: Option<&(String, String)>,
) -> io::Result<()> {
    // Greeting: no authentication, and username/password when we have credentials.
    let methods: &[u8] = if credentials.is_some() { &[0, 2] } else { &[0] };
    let mut hello = vec![5, methods.len() as u8];
    hello.extend_from_slice(methods);
    s.write_all(&hello)?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)?;
    if r[0] != 5 {
        return Err(err("socks-proxy: not a SOCKS5 server"));
    }
    match (r[1], credentials) {
        (0, _) => {}
        (2, Some((user, pass))) => {
            if user.len() > 255 || pass.len() > 255 {
                return Err(err(
                    "socks-proxy: username or password longer than 255 bytes",
                ));
            }
            let mut a = vec![1, user.len() as u8];
            a.extend_from_slice(user.as_bytes());
            a.push(pass.len() as u8);
            a.extend_from_slice(pass.as_bytes());
            s.write_all(&a)?;
            s.read_exact(&mut r)?;
            if r[1] != 0 {
                return Err(err("socks-proxy: username/password refused"));
            }
        }
        (0xff, _) => {
            return Err(err(
                "socks-proxy accepts none of our authentication methods",
            ));
        }
        (m, _) => return Err(err(format!("socks-proxy chose unsupported method {m}"))),
    }
    // CONNECT to an address or a name the proxy resolves.
    let mut req = vec![5, 1, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Ok(std::net::IpAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            if host.len() > 255 {
                return Err(err("socks-proxy: host name longer than 255 bytes"));
            }
            req.push(3);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    if head[0] != 5 {
        return Err(err("socks-proxy: malformed reply"));
    }
    if head[1] != 0 {
        let why = match head[1] {
            1 => "general failure",
            2 => "not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        };
        return Err(err(format!(
            "socks-proxy could not connect to {host}:{port}: {why}"
        )));
    }
    // The bound address, of a length the type says; read and drop it.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n)?;
            usize::from(n[0]) + 2
        }
        _ => return Err(err("socks-proxy: malformed reply address")),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip)?;
    Ok(())
}

//! Which `Host:` names the local API answers: its defence against DNS rebinding.
//!
//! A web page on the internet can make a technician's browser resolve a name the page controls
//! (`evil.example`) to the gateway's address and then read the API as if it were the page's own
//! origin. The browser still sends the page's name in `Host:`, so the API answers only names it
//! knows as its own ([`AllowedHosts`]); anything else is 421 Misdirected Request.
//!
//! An IP literal in `Host:` cannot come from a rebinding (nothing resolves it), so literals are
//! allowed when they are the listening address, a loopback address when listening on loopback,
//! or any address when listening on every interface (`0.0.0.0`, `::`): the machine's addresses
//! change with DHCP and are not worth tracking. Names: `localhost` when listening on loopback or
//! every interface, the host name and `<host name>.local`, and `[api] allowed_hosts`. The port in
//! `Host:` is checked for form only (a port forward may change it; the name is what matters).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A `Host:` value taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// Lowercase, without a trailing dot.
    Name(String),
}

/// Parses a `Host:` value (`name`, `name:port`, `1.2.3.4:80`, `[::1]:8080`, `[::1]`): the host
/// and the port, or `None` for anything else (an unbracketed IPv6 literal, an empty name, a
/// character no host name has, a port that is not one).
#[must_use]
pub fn parse_host(value: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        let ip = literal.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (name, port) = match value.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if name.is_empty() || name.len() > 253 || !name.chars().all(ok) {
            return None;
        }
        match name.parse::<Ipv4Addr>() {
            Ok(ip) => (Host::Ip(IpAddr::V4(ip)), port),
            Err(_) => (Host::Name(name.to_ascii_lowercase()), port),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// The names and addresses the API answers to. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
    ips: Vec<IpAddr>,
    any_ip: bool,
}

/// Why a request's `Host:` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRefusal {
    Missing,
    Malformed(String),
    NotAllowed(String),
}

impl std::fmt::Display for HostRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostRefusal::Missing => f.write_str(
                "the request has no Host header; this API answers only its own names \
                 (add a name to [api] allowed_hosts to use it)",
            ),
            HostRefusal::Malformed(host) => write!(f, "Host `{host}` is not a host name"),
            HostRefusal::NotAllowed(host) => write!(
                f,
                "Host `{host}` is not a name of this gateway; if it is, add it to \
                 [api] allowed_hosts"
            ),
        }
    }
}

impl AllowedHosts {
    /// The names for an API listening on `listen`, on a machine called `host_name`, with the
    /// site's own `extra` names and addresses (`[api] allowed_hosts`, each checked by
    /// [`parse_allowed`]; one that is not a host is skipped here).
    #[must_use]
    pub fn new(listen: SocketAddr, host_name: Option<&str>, extra: &[String]) -> AllowedHosts {
        let ip = listen.ip();
        let mut allowed = AllowedHosts {
            names: Vec::new(),
            ips: vec![ip],
            any_ip: ip.is_unspecified(),
        };
        if ip.is_loopback() || ip.is_unspecified() {
            allowed.names.push("localhost".into());
            allowed.ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
            allowed.ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        if let Some(Host::Name(name)) = host_name.and_then(|n| parse_allowed(n).ok()) {
            allowed.names.push(format!("{name}.local"));
            allowed.names.push(name);
        }
        for entry in extra {
            match parse_allowed(entry) {
                Ok(Host::Name(name)) => allowed.names.push(name),
                Ok(Host::Ip(ip)) => allowed.ips.push(ip),
                Err(_) => {}
            }
        }
        allowed
    }

    /// Whether a request with this `Host:` value (`None`: none given) is answered.
    pub fn check(&self, host: Option<&str>) -> Result<(), HostRefusal> {
        let value = host.ok_or(HostRefusal::Missing)?;
        let shown = || value.chars().take(100).collect::<String>();
        let (host, _port) = parse_host(value).ok_or_else(|| HostRefusal::Malformed(shown()))?;
        let allowed = match &host {
            Host::Ip(ip) => self.any_ip || self.ips.contains(&canonical(*ip)),
            Host::Name(name) => self.names.iter().any(|n| n == name),
        };
        if allowed {
            Ok(())
        } else {
            Err(HostRefusal::NotAllowed(shown()))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `[api] allowed_hosts` entry: a host name or an IP literal (IPv6 with or without
/// brackets), without a port.
pub fn parse_allowed(entry: &str) -> Result<Host, String> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(Host::Ip(canonical(ip)));
    }
    match parse_host(entry) {
        Some((_, Some(_))) => Err(format!(
            "`{entry}`: give the name without a port (any port is accepted)"
        )),
        Some((Host::Ip(ip), None)) => Ok(Host::Ip(canonical(ip))),
        Some((host, None)) => Ok(host),
        None => Err(format!("`{entry}` is not a host name or an IP address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(listen: &str) -> AllowedHosts {
        AllowedHosts::new(
            listen.parse().unwrap(),
            Some("Gw-North"),
            &["outpost.site.example".into(), "10.1.2.3".into()],
        )
    }

    #[test]
    fn host_values_are_taken_apart_with_and_without_ports() {
        let name = |n: &str| Host::Name(n.into());
        let v4 = |a, b, c, d| Host::Ip(IpAddr::from([a, b, c, d]));
        assert_eq!(
            parse_host("Example.COM."),
            Some((name("example.com"), None))
        );
        assert_eq!(
            parse_host("localhost:8080"),
            Some((name("localhost"), Some(8080)))
        );
        assert_eq!(
            parse_host("127.0.0.1:80"),
            Some((v4(127, 0, 0, 1), Some(80)))
        );
        assert_eq!(
            parse_host("[::1]:8080"),
            Some((Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), Some(8080)))
        );
        assert_eq!(
            parse_host("[::1]"),
            Some((Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), None))
        );
        for bad in [
            "",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "a:b",
            "a:99999",
            "a b",
            "a/b",
            ":80",
            "[zz]",
            "évil.example",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn on_loopback_localhost_and_loopback_literals_are_answered() {
        let allowed = on("127.0.0.1:8080");
        for good in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "gw-north",
            "gw-north.local:8080",
            "outpost.site.example",
            "10.1.2.3:8080",
        ] {
            assert_eq!(allowed.check(Some(good)), Ok(()), "{good}");
        }
    }

    #[test]
    fn a_rebinding_name_or_another_address_is_refused() {
        let allowed = on("127.0.0.1:8080");
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "gw-north.evil.example",
            "192.168.1.20:8080",
        ] {
            assert_eq!(
                allowed.check(Some(bad)),
                Err(HostRefusal::NotAllowed(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(allowed.check(None), Err(HostRefusal::Missing));
        assert!(matches!(
            allowed.check(Some("a b")),
            Err(HostRefusal::Malformed(_))
        ));
        assert!(
            HostRefusal::NotAllowed("evil.example".into())
                .to_string()
                .contains("allowed_hosts")
        );
    }

    #[test]
    fn on_a_lan_address_only_it_and_the_names_are_answered() {
        let allowed = on("192.168.1.20:8080");
        assert_eq!(allowed.check(Some("192.168.1.20:8080")), Ok(()));
        assert_eq!(allowed.check(Some("gw-north.local")), Ok(()));
        assert!(allowed.check(Some("localhost")).is_err());
        assert!(allowed.check(Some("127.0.0.1")).is_err());
    }

    #[test]
    fn on_every_interface_any_literal_is_answered_but_names_still_checked() {
        for listen in ["0.0.0.0:8080", "[::]:8080"] {
            let allowed = on(listen);
            assert_eq!(allowed.check(Some("192.168.1.20:8080")), Ok(()));
            assert_eq!(allowed.check(Some("[fe80::1]:8080")), Ok(()));
            assert_eq!(allowed.check(Some("localhost")), Ok(()));
            assert!(allowed.check(Some("evil.example")).is_err());
        }
    }

    #[test]
    fn allowed_host_entries_are_names_or_literals_without_ports() {
        assert_eq!(
            parse_allowed("::1"),
            Ok(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        assert_eq!(
            parse_allowed("[::1]"),
            Ok(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        assert_eq!(
            parse_allowed("Gw.Example"),
            Ok(Host::Name("gw.example".into()))
        );
        assert!(
            parse_allowed("gw.example:8080")
                .unwrap_err()
                .contains("port")
        );
        assert!(parse_allowed("http://gw").is_err());
        assert!(parse_allowed("").is_err());
    }
}

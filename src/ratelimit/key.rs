//! What a rate limit counts by: the client's address (believing
//! `X-Forwarded-For` only from trusted proxies), an identity claim, the
//! API-key consumer, a header, the route, or a combination. A missing value
//! falls back to the client address, so a client cannot escape a limit by
//! leaving a header out.

use std::net::IpAddr;

/// An address block, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ip` or `ip/prefix`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr: ip, prefix })
    }

    /// True when `ip` lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is read from the right, skipping trusted
/// hops, and the first untrusted (or the leftmost) address is the client.
pub fn client_ip(peer: IpAddr, xff: Option<&[u8]>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(list) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return peer;
    };
    let mut client = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // A malformed entry ends what can be believed.
            Err(_) => break,
        }
    }
    client
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address.
    ClientIp,
    /// An identity claim forwarded by authentication (by its header name).
    Identity(String),
    /// A claim of the verified caller (`consumer` for API keys).
    Claim(String),
    /// A request header's value.
    Header(String),
    /// The route's name.
    Route,
}

/// The values a key is built from, for one request.
pub struct KeyFacts<'a> {
    /// The client's address (see [`client_ip`]).
    pub client: IpAddr,
    /// The matched route's name.
    pub route: &'a str,
    /// Looks up an identity value by its header name.
    pub identity: &'a dyn Fn(&str) -> Option<&'a str>,
    /// Looks up a verified claim by name.
    pub claim: &'a dyn Fn(&str) -> Option<&'a str>,
    /// Looks up a request header by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
}

/// Builds the key for `parts` into `out` (cleared first). Each part is
/// tagged, so `Header("a")="x"` and `Route`="x" never collide.
pub fn build_key(parts: &[KeyPart], facts: &KeyFacts<'_>, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        let value: Option<std::borrow::Cow<'_, str>> = match part {
            KeyPart::ClientIp => None,
            KeyPart::Identity(h) => (facts.identity)(h).map(Into::into),
            KeyPart::Claim(c) => (facts.claim)(c).map(Into::into),
            KeyPart::Header(h) => (facts.header)(h).map(String::from_utf8_lossy),
            KeyPart::Route => Some(facts.route.into()),
        };
        match value {
            Some(v) => {
                let _ = write!(out, "{i}={v}");
            }
            None => {
                let _ = write!(out, "{i}@{}", facts.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let xff = Some(&b"203.0.113.9, 198.51.100.7, 10.0.0.2"[..]);
        // From an untrusted peer the header is ignored.
        assert_eq!(client_ip(ip("192.0.2.1"), xff, &trusted), ip("192.0.2.1"));
        // From a trusted proxy: skip trusted hops from the right.
        assert_eq!(client_ip(ip("10.0.0.1"), xff, &trusted), ip("198.51.100.7"));
        // A spoofed leftmost entry does not help when a real client is to its right.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"1.1.1.1, 192.0.2.50"), &trusted),
            ip("192.0.2.50")
        );
        // Garbage ends the walk.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"x, 10.0.0.3"), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn keys_fall_back_to_the_client_address_and_do_not_collide() {
        let identity = |h: &str| (h == "X-User-Id").then_some("u1");
        let header = |h: &str| (h == "x-tenant").then_some(&b"acme"[..]);
        let claim = |c: &str| (c == "sub").then_some("alice");
        let facts = KeyFacts {
            client: ip("192.0.2.1"),
            route: "users",
            identity: &identity,
            claim: &claim,
            header: &header,
        };
        let mut k = String::new();
        build_key(&[KeyPart::Identity("X-User-Id".into())], &facts, &mut k);
        assert_eq!(k, "0=u1");
        build_key(&[KeyPart::Claim("sub".into())], &facts, &mut k);
        assert_eq!(k, "0=alice");
        build_key(&[KeyPart::Identity("X-Missing".into())], &facts, &mut k);
        assert_eq!(k, "0@192.0.2.1");
        build_key(
            &[KeyPart::Route, KeyPart::Header("x-tenant".into())],
            &facts,
            &mut k,
        );
        let combined = k.clone();
        build_key(
            &[KeyPart::Header("x-tenant".into()), KeyPart::Route],
            &facts,
            &mut k,
        );
        assert_ne!(k, combined);
        build_key(&[KeyPart::ClientIp], &facts, &mut k);
        assert_eq!(k, "0@192.0.2.1");
    }
}

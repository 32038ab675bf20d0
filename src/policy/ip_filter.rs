//! Client address allow/deny lists, on a listener (before routing) and on
//! a route. The address is the one the rate limiter reads
//! ([`crate::ratelimit::key::client_ip`]): the peer, or the first untrusted
//! hop of `X-Forwarded-For` when the peer is a trusted proxy.

use crate::config::IpFilter;
use crate::ratelimit::key::Cidr;
use std::net::IpAddr;

/// Compiled allow/deny lists.
#[derive(Debug, Clone, Default)]
pub struct IpFilterPlan {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

/// Entries of `list` that are not addresses or blocks.
pub fn bad_entries(list: &[String]) -> Vec<&str> {
    list.iter()
        .filter(|e| Cidr::parse(e).is_none())
        .map(String::as_str)
        .collect()
}

impl IpFilterPlan {
    /// Compiles the lists; `Err` names an entry that is not an address or block.
    pub fn compile(f: &IpFilter) -> Result<IpFilterPlan, String> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|e| {
                    Cidr::parse(e).ok_or_else(|| format!("{e:?} is not an address or CIDR block"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(IpFilterPlan {
            allow: parse(&f.allow)?,
            deny: parse(&f.deny)?,
        })
    }

    /// True when `ip` may call: not in a denied block, and in an allowed
    /// block when there are any. An IPv4-mapped IPv6 address is seen as IPv4.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(allow: &[&str], deny: &[&str]) -> IpFilterPlan {
        let f = IpFilter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        match IpFilterPlan::compile(&f) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let p = plan(&["10.0.0.0/8", "2001:db8::/32"], &["10.1.0.0/16"]);
        assert!(p.admits(ip("10.2.3.4")));
        assert!(!p.admits(ip("10.1.3.4")));
        assert!(!p.admits(ip("192.0.2.1")));
        assert!(p.admits(ip("2001:db8::1")));
        assert!(p.admits(ip("::ffff:10.2.3.4")));
        assert!(!p.admits(ip("::ffff:10.1.3.4")));
        let open = plan(&[], &["203.0.113.0/24"]);
        assert!(open.admits(ip("192.0.2.1")));
        assert!(!open.admits(ip("203.0.113.9")));
    }

    #[test]
    fn bad_entries_are_named() {
        let list = vec![
            "10.0.0.0/8".to_string(),
            "ten".to_string(),
            "10.0.0.0/33".to_string(),
        ];
        assert_eq!(bad_entries(&list), vec!["ten", "10.0.0.0/33"]);
    }
}

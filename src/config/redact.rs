//! What `/config` shows in place of secrets: the config's own types say
//! which fields are secret (`serialize_with` these functions), so a secret
//! never reaches the admin API's JSON.

use serde::Serializer;
use std::collections::BTreeMap;

/// The text every secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// A secret value.
pub fn secret<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// A map whose keys are names and whose values are secret (API-key hashes).
pub fn values<S: Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(m.len()))?;
    for k in m.keys() {
        out.serialize_entry(k, REDACTED)?;
    }
    out.end()
}

/// A URL with its password (`scheme://user:password@host`) redacted.
pub fn url_password<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&without_password(url))
}

fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:{REDACTED}@{host}{path}")
            } else {
                // `redis://secret@host`: a lone userinfo is the password.
                format!("{scheme}://{REDACTED}@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_urls() {
        assert_eq!(
            without_password("redis://app:hunter2@127.0.0.1:6379/0"),
            "redis://app:<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("redis://hunter2@h:1"),
            "redis://<redacted>@h:1"
        );
        assert_eq!(without_password("redis://h:1/2"), "redis://h:1/2");
        assert_eq!(without_password("nonsense"), "nonsense");
    }
}

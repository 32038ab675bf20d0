//! Path normalisation (RFC 3986 §6.2.2), run before routing so that what the
//! gateway routes, authorises and rate-limits is the path the upstream gets.
//!
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded;
//!   every other percent-encoding is upper-cased; a `%` not followed by two
//!   hex digits is refused.
//! - `.` and `..` segments (also when spelled `%2E`) are refused.
//! - Repeated slashes are merged when the listener says so (the default).
//! - `%2F`, `%5C`, `%00` and a raw `\` follow the listener's
//!   [`EncodedSlash`] (`Keep` forwards a raw `\` as `%5C`); a NUL is never
//!   decoded. Dot segments between backslashes are refused too.
//! - A `;` is refused: servers that strip `;params` from segments would
//!   serve `/admin;x` as `/admin`.
//! - Case is kept: paths are case-sensitive.

use serde::Deserialize;
use std::borrow::Cow;

/// What an encoded `/`, `\` or NUL (and a raw `\`) in a path does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum EncodedSlash {
    /// Refuse the request (400).
    #[default]
    Reject,
    /// Keep the encoding (upper-cased) and route on it as an ordinary character.
    Keep,
    /// Decode `%2F` to `/` and `%5C` to `\`; `%00` is still refused.
    Decode,
}

/// A listener's normalisation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Merge runs of `/` into one.
    pub merge_slashes: bool,
    /// What encoded separators do.
    pub encoded_slash: EncodedSlash,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            encoded_slash: EncodedSlash::Reject,
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const ENCODED_SEPARATOR: &str = "encoded slash, backslash or NUL in the path";

/// The normal form of `path` (which starts with `/`), borrowed when it is
/// already normal; `Err` carries the reason for a 400.
pub fn normalize(path: &str, opts: PathOptions) -> Result<Cow<'_, str>, &'static str> {
    let bytes = path.as_bytes();
    let needs_work = bytes.iter().any(|&b| matches!(b, b'%' | b'\\' | b';'))
        || (opts.merge_slashes && bytes.windows(2).any(|w| w == b"//"));
    if !needs_work {
        check_dot_segments(path)?;
        return Ok(Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i).copied().and_then(hex),
                    bytes.get(i + 1).copied().and_then(hex),
                ) else {
                    return Err("malformed percent-encoding in the path");
                };
                i += 2;
                let v = h * 16 + l;
                if unreserved(v) {
                    out.push(v);
                } else if matches!(v, b'/' | b'\\' | 0) {
                    match opts.encoded_slash {
                        EncodedSlash::Reject => return Err(ENCODED_SEPARATOR),
                        EncodedSlash::Decode if v == 0 => return Err(ENCODED_SEPARATOR),
                        EncodedSlash::Decode => push_char(&mut out, v, opts),
                        EncodedSlash::Keep => push_encoded(&mut out, v),
                    }
                } else {
                    push_encoded(&mut out, v);
                }
            }
            b'\\' => match opts.encoded_slash {
                EncodedSlash::Reject => return Err(ENCODED_SEPARATOR),
                EncodedSlash::Keep => push_encoded(&mut out, b'\\'),
                EncodedSlash::Decode => out.push(b'\\'),
            },
            b';' => return Err("path parameters (;) are not accepted"),
            _ => push_char(&mut out, b, opts),
        }
    }
    let out = String::from_utf8(out).map_err(|_| "the path is not valid UTF-8")?;
    check_dot_segments(&out)?;
    Ok(Cow::Owned(out))
}

fn push_char(out: &mut Vec<u8>, b: u8, opts: PathOptions) {
    if !(b == b'/' && opts.merge_slashes && out.last() == Some(&b'/')) {
        out.push(b);
    }
}

fn push_encoded(out: &mut Vec<u8>, v: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'%');
    out.extend(
        [v >> 4, v & 15]
            .iter()
            .filter_map(|&d| DIGITS.get(d as usize)),
    );
}

/// `.`/`..` segments are refused, with `\` counted as a separator too (some
/// servers treat it as one).
fn check_dot_segments(path: &str) -> Result<(), &'static str> {
    if path.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Err("dot segments are not allowed in the path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, &'static str> {
        normalize(p, PathOptions::default()).map(Cow::into_owned)
    }

    fn with(
        p: &str,
        merge_slashes: bool,
        encoded_slash: EncodedSlash,
    ) -> Result<String, &'static str> {
        normalize(
            p,
            PathOptions {
                merge_slashes,
                encoded_slash,
            },
        )
        .map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/users/42", PathOptions::default()),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(n("/"), Ok("/".into()));
    }

    #[test]
    fn decodes_unreserved_and_upper_cases_the_rest() {
        assert_eq!(n("/%61dmin"), Ok("/admin".into()));
        assert_eq!(n("/%61%64%6d%69%6E"), Ok("/admin".into()));
        assert_eq!(n("/%7Euser"), Ok("/~user".into()));
        assert_eq!(n("/a%3fb"), Ok("/a%3Fb".into()));
        assert_eq!(n("/caf%c3%a9"), Ok("/caf%C3%A9".into()));
        assert_eq!(n("/Admin"), Ok("/Admin".into()));
        assert!(n("/a%2").is_err());
        assert!(n("/a%zz").is_err());
        assert!(n("/a%").is_err());
    }

    #[test]
    fn dot_segments_refused_in_every_spelling() {
        for p in [
            "/./admin",
            "/a/../admin",
            "/%2e%2e/admin",
            "/%2E/admin",
            "/a/.",
            "/a/%2e.",
        ] {
            assert!(n(p).is_err(), "{p}");
        }
        assert_eq!(n("/a/.b"), Ok("/a/.b".into()));
        assert_eq!(n("/a/..b"), Ok("/a/..b".into()));
    }

    #[test]
    fn slashes() {
        assert_eq!(n("//admin"), Ok("/admin".into()));
        assert_eq!(n("///a//b/"), Ok("/a/b/".into()));
        assert_eq!(with("//x", false, EncodedSlash::Reject), Ok("//x".into()));
        for p in ["/admin%2F", "/admin%2f", "/a%5Cb", "/a\\b", "/a%00"] {
            assert!(n(p).is_err(), "{p}");
        }
        assert_eq!(
            with("/a%2fb", true, EncodedSlash::Keep),
            Ok("/a%2Fb".into())
        );
        assert_eq!(
            with("/a%5cb", true, EncodedSlash::Keep),
            Ok("/a%5Cb".into())
        );
        assert_eq!(with("/a\\b", true, EncodedSlash::Keep), Ok("/a%5Cb".into()));
        assert!(with("/x\\..\\admin", true, EncodedSlash::Decode).is_err());
        assert!(with("/x%5C..%5Cadmin", true, EncodedSlash::Decode).is_err());
        assert_eq!(
            with("/x\\..\\admin", true, EncodedSlash::Keep),
            Ok("/x%5C..%5Cadmin".into())
        );
        assert_eq!(
            with("/a%2Fb", true, EncodedSlash::Decode),
            Ok("/a/b".into())
        );
        assert_eq!(
            with("/a%2F%2Fb", true, EncodedSlash::Decode),
            Ok("/a/b".into())
        );
        assert_eq!(
            with("/a%5Cb", true, EncodedSlash::Decode),
            Ok("/a\\b".into())
        );
        assert!(with("/a%00", true, EncodedSlash::Decode).is_err());
        assert!(with("/a%2F..%2Fb", true, EncodedSlash::Decode).is_err());
    }

    #[test]
    fn semicolons_refused() {
        assert!(n("/admin;x").is_err());
        assert!(n("/a;jsessionid=1/b").is_err());
        assert_eq!(n("/a%3Bb"), Ok("/a%3Bb".into()));
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in ["/%61dmin", "//a//b", "/a%3fb%7e", "/x%2f"] {
            for mode in [EncodedSlash::Keep, EncodedSlash::Decode] {
                if let Ok(once) = with(p, true, mode) {
                    assert_eq!(with(&once, true, mode), Ok(once.clone()), "{p}");
                }
            }
        }
    }
}

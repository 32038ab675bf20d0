//! Client certificates as an authenticator: verification against the
//! authenticator's CA and the identity a certificate carries (subject DN,
//! common name, DNS names).

use crate::auth::{Denied, Identity};
use crate::config::ClientCertAuth;
use rustls::server::danger::ClientCertVerifier as RustlsVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

/// A compiled `ClientCert` authenticator.
pub struct ClientCertVerifier {
    verifier: Arc<dyn RustlsVerifier>,
    /// Claim name → header name.
    forward_claims: Vec<(String, String)>,
}

impl std::fmt::Debug for ClientCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertVerifier")
            .field("forward_claims", &self.forward_claims)
            .finish_non_exhaustive()
    }
}

/// The CA certificates in a PEM file (at least one).
pub fn read_cas(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let cas = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("ca {path:?}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca {path:?}: {e}"))?;
    if cas.is_empty() {
        return Err(format!("ca {path:?} holds no certificate"));
    }
    Ok(cas)
}

/// A rustls verifier of client certificates chaining to `cas`; with
/// `optional`, a client without a certificate is let through the handshake
/// (routes that require one refuse it later, with a 401).
pub fn verifier(
    cas: &[CertificateDer<'static>],
    optional: bool,
) -> Result<Arc<dyn RustlsVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(cas.iter().cloned());
    if added == 0 {
        return Err("no usable CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let b = if optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    b.build().map_err(|e| e.to_string())
}

impl ClientCertVerifier {
    /// Reads the CA file.
    pub fn compile(c: &ClientCertAuth) -> Result<ClientCertVerifier, String> {
        let cas = read_cas(&c.ca)?;
        Ok(ClientCertVerifier {
            verifier: verifier(&cas, false).map_err(|e| format!("ca {:?}: {e}", c.ca))?,
            forward_claims: c
                .forward_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The identity of a presented chain (leaf first) that chains to this
    /// authenticator's CA.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<Identity, Denied> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(Denied::Missing);
        };
        self.verifier
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map_err(|e| Denied::Invalid(format!("client certificate: {e}")))?;
        let claims = claims_of(leaf);
        let headers = self
            .forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                claims
                    .iter()
                    .find(|(k, _)| k == claim)
                    .map(|(_, v)| (header.clone(), v.clone()))
            })
            .collect();
        Ok(Identity {
            headers,
            scopes: Vec::new(),
            roles: Vec::new(),
            claims,
            authenticator: 0,
        })
    }
}

/// `subject`, `cn` and `san` of a certificate.
pub fn claims_of(cert: &CertificateDer<'_>) -> Vec<(String, String)> {
    let mut claims = Vec::new();
    if let Ok(ee) = webpki::EndEntityCert::try_from(cert) {
        let rdns = subject_rdns(ee.subject());
        let dn = rdns
            .iter()
            .rev()
            .map(|(k, v)| format!("{k}={}", escape_dn(v)))
            .collect::<Vec<_>>()
            .join(",");
        claims.push(("subject".to_string(), dn));
        if let Some((_, cn)) = rdns.iter().find(|(k, _)| *k == "CN") {
            claims.push(("cn".to_string(), cn.clone()));
        }
        let sans: Vec<&str> = ee.valid_dns_names().collect();
        if !sans.is_empty() {
            claims.push(("san".to_string(), sans.join(",")));
        }
    }
    claims
}

/// RFC 4514 escaping of an attribute value (control bytes dropped, as a
/// header value cannot carry them).
fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if c.is_control() {
            continue;
        }
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (
            bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
            rest,
        )
    };
    let (body, rest) = rest.split_at_checked(len)?;
    Some((tag, body, rest))
}

/// The attributes of a subject name, in DER order, with short names for
/// the usual ones (others as dotted OIDs).
pub fn subject_rdns(name: &[u8]) -> Vec<(String, String)> {
    // webpki hands the contents of the Name SEQUENCE; accept the whole
    // SEQUENCE as well.
    let mut rdns = match der(name) {
        Some((0x30, body, [])) => body,
        _ => name,
    };
    let mut out = Vec::new();
    while let Some((0x31, mut set, rest)) = der(rdns) {
        rdns = rest;
        while let Some((0x30, atv, more)) = der(set) {
            set = more;
            let Some((0x06, oid, value)) = der(atv) else {
                continue;
            };
            let Some((_, value, _)) = der(value) else {
                continue;
            };
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                _ => oid_text(oid),
            };
            out.push((key, String::from_utf8_lossy(value).into_owned()));
        }
    }
    out
}

fn oid_text(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    if let Some((&first, rest)) = oid.split_first() {
        parts.push(u64::from(first / 40));
        parts.push(u64::from(first % 40));
        let mut acc = 0u64;
        for b in rest {
            acc = (acc << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                parts.push(acc);
                acc = 0;
            }
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "client, one");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Partners");
        let cert = p.self_signed(&key).unwrap();
        let claims = claims_of(cert.der());
        let get = |k: &str| claims.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("cn").as_deref(), Some("client, one"));
        let subject = get("subject").unwrap();
        assert!(subject.contains("CN=client\\, one"), "{subject}");
        assert!(subject.contains("O=Partners"), "{subject}");
        assert_eq!(get("san").as_deref(), Some("a.example"));
    }

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert!(der(&[0x30, 0x05, 0x01]).is_none());
        assert!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(subject_rdns(&[0x31, 0x80]).is_empty());
    }
}

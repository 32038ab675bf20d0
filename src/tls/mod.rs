//! TLS: termination on listeners (certificates chosen by SNI, session
//! tickets shared by all shards, ALPN), over a small adapter of rustls onto
//! monoio's owned-buffer sockets ([`stream`]).

pub mod client_auth;
pub mod stream;

pub use stream::{Stream, TlsStream};

use crate::config::ListenerTls;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A listener's compiled TLS settings (shared by all shards; read once per
/// accepted connection, never per request).
pub struct ServerTls {
    /// The rustls configuration new handshakes use.
    pub config: Arc<rustls::ServerConfig>,
    /// How long a client has to complete its handshake.
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once on one shard; a connection past
    /// it is closed at once.
    pub max_handshakes: usize,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

/// The session-ticket keys: one rotating ticketer for the whole process, so
/// a ticket issued by one shard resumes on any other, and across reloads.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

/// Reads a certificate chain and its private key (PEM; PKCS#8, PKCS#1 RSA
/// or SEC1 EC) and checks that the key belongs to the first certificate.
pub fn load_cert_key(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cert {cert:?}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert {cert:?}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("cert {cert:?} holds no certificate"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {key:?}: {e}"))?;
    let signing = any_supported_type(&der).map_err(|e| format!("key {key:?}: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(format!(
                "key {key:?} does not belong to the certificate in {cert:?}"
            ))
        }
    }
    Ok(ck)
}

/// The DNS names a certificate is valid for (its subject alternative names).
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Certificates chosen by the name the client asked for (SNI): an exact
/// name first, then a wildcard one level up, else the first certificate.
#[derive(Debug)]
pub struct SniCerts {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniCerts {
    /// Indexes `certs` by their DNS names; the first is the default. On a
    /// name held by two certificates, the first listed wins.
    pub fn new(certs: Vec<Arc<CertifiedKey>>) -> Option<SniCerts> {
        let default = certs.first()?.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for ck in &certs {
            let Some(leaf) = ck.cert.first() else {
                continue;
            };
            for name in dns_names(leaf) {
                match name.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| ck.clone());
            }
        }
        Some(SniCerts {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for `name` (any case; `None`: no SNI sent).
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.to_ascii_lowercase();
        if let Some(ck) = self.exact.get(&name) {
            return ck;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Compiles a listener's `tls` settings: reads every certificate and key.
///
/// `client_cas`: the CAs of the config's `ClientCert` authenticators; when
/// there are some, clients are asked for a certificate chaining to one of
/// them (optional at the handshake; the routes decide).
pub fn compile_server(
    t: &ListenerTls,
    client_cas: &[CertificateDer<'static>],
    http2: bool,
) -> Result<ServerTls, String> {
    let mut keys = Vec::new();
    for (cert, key) in t.pairs() {
        keys.push(Arc::new(load_cert_key(cert, key)?));
    }
    let sni = SniCerts::new(keys).ok_or("tls needs a certificate: cert and key, or certs")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(client_auth::verifier(client_cas, true)?)
    };
    let mut config = builder.with_cert_resolver(Arc::new(sni));
    // With HTTP/2 on, h2 is preferred when the client offers both.
    config.alpn_protocols = match http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    config.ticketer = ticketer()?;
    // Resumption by ticket only: no server-side session cache (it would be
    // a lock shared by the shards).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(ServerTls {
        config: Arc::new(config),
        handshake_timeout: Duration::from_millis(t.handshake_timeout_ms),
        max_handshakes: t.max_handshakes,
    })
}

thread_local! {
    /// Handshakes in progress on this shard.
    static HANDSHAKES: Cell<usize> = const { Cell::new(0) };
}

/// Counts one handshake in progress for as long as it lives.
struct InFlight;

impl InFlight {
    fn try_new(max: usize) -> Option<InFlight> {
        HANDSHAKES.with(|h| {
            (h.get() < max).then(|| {
                h.set(h.get() + 1);
                InFlight
            })
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        HANDSHAKES.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

/// Why an accepted connection did not become a TLS stream.
#[derive(Debug)]
pub enum AcceptError {
    /// The shard already runs `max_handshakes` handshakes.
    Busy,
    /// No handshake within the timeout (or the shard is stopping).
    Timeout,
    /// The client spoke plain HTTP to a TLS port (answered with a 400).
    PlainHttp,
    /// The handshake failed.
    Failed(std::io::Error),
}

/// The answer to plain HTTP on a TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 69\r\nConnection: close\r\n\r\n{\"error\":\"bad_request\",\"message\":\"this port speaks HTTPS, not HTTP\"}\n";

/// Runs the server side of a handshake on `tcp`, bounded by the listener's
/// timeout, `stop`, and the shard's cap on handshakes in flight.
pub async fn accept(
    tls: &ServerTls,
    tcp: monoio::net::TcpStream,
    stop: impl std::future::Future<Output = ()>,
) -> Result<TlsStream, AcceptError> {
    use monoio::io::AsyncWriteRentExt;
    use std::os::fd::AsRawFd;
    let Some(_in_flight) = InFlight::try_new(tls.max_handshakes) else {
        return Err(AcceptError::Busy);
    };
    let session = rustls::ServerConnection::new(tls.config.clone())
        .map_err(|e| AcceptError::Failed(std::io::Error::other(e)))?;
    let mut s = TlsStream::new(tcp, session);
    let fd = s.as_raw_fd();
    let res = {
        let hs = s.handshake();
        let mut hs = std::pin::pin!(hs);
        let done = monoio::select! {
            r = &mut hs => Some(r),
            _ = monoio::time::sleep(tls.handshake_timeout) => None,
            _ = stop => None,
        };
        if done.is_none() {
            // Ends the pending socket operation; the handshake then fails
            // at once and gives its buffer back.
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            let _ = hs.await;
        }
        done
    };
    match res {
        None => Err(AcceptError::Timeout),
        Some(Ok(())) => Ok(s),
        Some(Err(e)) => {
            if s.starts_like_http() {
                let (mut tcp, _) = s.into_parts();
                let _ =
                    monoio::time::timeout(Duration::from_secs(1), tcp.write_all(PLAIN_HTTP_ANSWER))
                        .await;
                return Err(AcceptError::PlainHttp);
            }
            Err(AcceptError::Failed(e))
        }
    }
}

/// An upstream's TLS settings, compiled: the client config and the server
/// name of each target (in the order of [`crate::compiled::UpstreamPlan::targets`]).
#[derive(Clone)]
pub struct UpstreamTlsPlan {
    /// Verification roots, client certificate, ALPN, resumption.
    pub config: Arc<rustls::ClientConfig>,
    /// SNI and verified name, per target.
    pub names: Vec<rustls_pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTlsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsPlan")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The CAs a TLS client trusts: those in the PEM file `ca_file`, or the
/// bundled Mozilla roots.
pub fn root_store(ca_file: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(f) => {
            let certs = CertificateDer::pem_file_iter(f)
                .map_err(|e| format!("ca_file {f:?}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("ca_file {f:?}: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("ca_file {f:?} holds no usable certificate"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// The client config towards an upstream: verification against `ca_file`
/// or the bundled Mozilla roots, and the client certificate for mTLS.
pub fn client_config(
    t: Option<&crate::config::UpstreamTls>,
) -> Result<rustls::ClientConfig, String> {
    let roots = root_store(t.and_then(|t| t.ca_file.as_deref()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match t.and_then(|t| t.cert.as_deref().zip(t.key.as_deref())) {
        Some((cert, key)) => {
            let ck = load_cert_key(cert, key)?;
            let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {key:?}: {e}"))?;
            builder
                .with_client_auth_cert(ck.cert, der)
                .map_err(|e| format!("cert {cert:?}: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Compiles an upstream's TLS (`None` for a plain upstream).
pub fn compile_upstream(u: &crate::config::Upstream) -> Result<Option<UpstreamTlsPlan>, String> {
    let https = u.targets.iter().any(|t| crate::config::split_scheme(t).0);
    if u.tls.is_none() && !https {
        return Ok(None);
    }
    let config = Arc::new(client_config(u.tls.as_ref())?);
    let configured = u.tls.as_ref().and_then(|t| t.server_name.as_deref());
    let names = u
        .targets
        .iter()
        .map(|t| {
            let host = configured.unwrap_or_else(|| crate::config::target_host(t));
            rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| format!("{host:?} is not a usable TLS server name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(UpstreamTlsPlan { config, names }))
}

/// Runs the client side of a handshake over `tcp` towards `name`.
pub async fn connect(
    plan: &UpstreamTlsPlan,
    name: rustls_pki_types::ServerName<'static>,
    tcp: monoio::net::TcpStream,
) -> Result<TlsStream, std::io::Error> {
    let session =
        rustls::ClientConnection::new(plan.config.clone(), name).map_err(std::io::Error::other)?;
    let mut s = TlsStream::new(tcp, session);
    s.handshake().await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certified(names: &[&str]) -> Arc<CertifiedKey> {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let der = PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
        Arc::new(CertifiedKey::new(
            vec![made.cert.der().clone()],
            any_supported_type(&der).unwrap(),
        ))
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let api = certified(&["api.example.com"]);
        let wild = certified(&["*.example.org", "Exact.Example.Org"]);
        let sni = SniCerts::new(vec![api.clone(), wild.clone()]).unwrap();
        assert!(Arc::ptr_eq(sni.pick(Some("api.example.com")), &api));
        assert!(Arc::ptr_eq(sni.pick(Some("API.EXAMPLE.COM")), &api));
        assert!(Arc::ptr_eq(sni.pick(Some("shop.example.org")), &wild));
        assert!(Arc::ptr_eq(sni.pick(Some("exact.example.org")), &wild));
        assert!(Arc::ptr_eq(sni.pick(Some("example.org")), &api));
        assert!(Arc::ptr_eq(sni.pick(Some("a.b.example.org")), &api));
        assert!(Arc::ptr_eq(sni.pick(None), &api));
        assert!(SniCerts::new(Vec::new()).is_none());
    }

    #[test]
    fn a_name_claimed_twice_goes_to_the_first_listed() {
        let one = certified(&["same.example.net"]);
        let two = certified(&["same.example.net", "*.example.net"]);
        let sni = SniCerts::new(vec![one.clone(), two.clone()]).unwrap();
        assert!(Arc::ptr_eq(sni.pick(Some("same.example.net")), &one));
        assert!(Arc::ptr_eq(sni.pick(Some("other.example.net")), &two));
    }
}

//! Bytes through the TLS adapter (`shardgate::tls::TlsStream`): a server
//! and a client session on one monoio runtime over a loopback TCP pair;
//! the client writes 16 KiB, 64 KiB and 1 MiB messages, the server reads
//! them whole. Throughput is plaintext bytes encrypted, sent, received and
//! decrypted per second (TLS 1.3, AES-128-GCM or ChaCha20 as negotiated,
//! ECDSA P-256 certificate), so it bounds what one shard can move through
//! TLS. A second group does the same over plain TCP for reference.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shardgate::tls::{Stream, TlsStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = made.cert.der().clone();
    let key = PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// A connected (client, server) pair, TLS or plain.
async fn pair(
    tls: bool,
    cfg: &(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>),
) -> (Stream, Stream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = TcpStream::connect_addr(addr);
    let accept = listener.accept();
    let (c, s) = monoio::join!(connect, accept);
    let (c, (s, _)) = (c.unwrap(), s.unwrap());
    if !tls {
        return (Stream::Plain(c), Stream::Plain(s));
    }
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = TlsStream::new(
        c,
        rustls::ClientConnection::new(cfg.1.clone(), name).unwrap(),
    );
    let mut s = TlsStream::new(s, rustls::ServerConnection::new(cfg.0.clone()).unwrap());
    let (a, b) = monoio::join!(c.handshake(), s.handshake());
    a.unwrap();
    b.unwrap();
    (Stream::Tls(Box::new(c)), Stream::Tls(Box::new(s)))
}

/// Sends `iters` messages of `size` bytes from `c` to `s`; the time taken.
async fn run(c: &mut Stream, s: &mut Stream, size: usize, iters: u64) -> Duration {
    let started = Instant::now();
    let writer = async {
        let mut msg = vec![7u8; size];
        for _ in 0..iters {
            let (r, m) = c.write_all(msg).await;
            r.unwrap();
            msg = m;
        }
    };
    let reader = async {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut left = size as u64 * iters;
        while left > 0 {
            buf.clear();
            let (r, b) = s.read(buf).await;
            let n = r.unwrap();
            assert!(n > 0, "closed early");
            left = left.saturating_sub(n as u64);
            buf = b;
        }
    };
    monoio::join!(writer, reader);
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let cfg = configs();
    for tls in [true, false] {
        let mut g = c.benchmark_group(if tls { "tls_adapter" } else { "plain_tcp" });
        let (mut cl, mut sv) = rt.block_on(pair(tls, &cfg));
        for size in [16 * 1024, 64 * 1024, 1024 * 1024] {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
                b.iter_custom(|iters| rt.block_on(run(&mut cl, &mut sv, size, iters)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);

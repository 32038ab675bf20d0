//! What the binary's commands do: check, serve (with reload and graceful
//! shutdown driven by signals) and the demo.
use crate::compiled::{compile, Compiled};
use crate::config::{self, ConfigError};
use crate::shard::{self, ShardSet};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// `shardgate check FILE`.
pub fn check(file: &str) -> ExitCode {
    match config::load(Path::new(file))
        .map_err(|e| e.to_string())
        .and_then(|g| {
            compile(&g)?;
            Ok(g)
        }) {
        Ok(g) => {
            println!(
                "ok: {file}: {} listener(s), {} upstream(s), {} route(s)",
                g.listeners.len(),
                g.upstreams.len(),
                g.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Where the config comes from, so a reload can read it again.
#[derive(Clone)]
enum Source {
    File(String),
    Text { name: String, text: Arc<str> },
}

impl Source {
    fn load(&self) -> Result<Compiled, String> {
        let g = match self {
            Source::File(f) => config::load(Path::new(f)),
            Source::Text { name, text } => config::parse(name, text),
        }
        .map_err(|e: ConfigError| e.to_string())?;
        let compiled = compile(&g);
        crate::pace::drop_each(g.routes);
        compiled
    }

    fn name(&self) -> &str {
        match self {
            Source::File(f) => f,
            Source::Text { name, .. } => name,
        }
    }
}

/// `shardgate --config FILE`.
pub fn serve(file: &str) -> ExitCode {
    run(Source::File(file.to_string()), || {})
}

/// `shardgate` with no arguments: demo backends plus the gateway on the demo config.
pub fn demo() -> ExitCode {
    let text = std::fs::read_to_string("config/demo.ron")
        .unwrap_or_else(|_| crate::demo::DEMO_CONFIG.to_string());
    let text = match crate::demo::with_bundled_schemas(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shardgate: demo schema: {e}");
            return ExitCode::from(1);
        }
    };
    let text = match crate::demo::with_https_listener(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shardgate: demo https listener left out: {e}");
            text
        }
    };
    if let Err(e) = crate::demo::start_backends() {
        eprintln!("shardgate: demo backends failed to start: {e}");
        return ExitCode::from(1);
    }
    let code = run(
        Source::Text {
            name: "config/demo.ron".to_string(),
            text: text.into(),
        },
        crate::demo::print_instructions,
    );
    let _ = std::fs::remove_dir_all(crate::demo::files_dir());
    code
}

fn run(source: Source, on_ready: impl FnOnce()) -> ExitCode {
    let compiled = match source.load() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Installed before the shards start, so no signal is missed.
    let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardgate: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // Before the shards start: every connection is a descriptor.
    let nofile = shard::raise_nofile_limit();
    eprintln!("shardgate: {nofile}");
    eprintln!("shardgate: {}", crate::memory::keep_huge_pages_out());
    let most: usize = compiled
        .listeners
        .iter()
        .filter_map(|l| l.max_connections)
        .sum();
    // With a table per shard the limit bounds each shard's descriptors.
    let tables = match compiled.descriptor_tables {
        crate::config::DescriptorTables::Shared => 1,
        crate::config::DescriptorTables::PerShard => {
            let n = shard::plan_cores(&compiled.shards).map_or(1, |c| c.len().max(1));
            eprintln!(
                "shardgate: descriptor tables: one per shard; the open-file limit {} applies to each of the {n} shards ({} descriptors in all)",
                nofile.limit(),
                nofile.limit().saturating_mul(n as u64)
            );
            n as u64
        }
    };
    let capacity = nofile.limit().saturating_mul(tables);
    if capacity > 0 && capacity < most as u64 {
        eprintln!(
            "shardgate: the listeners' max_connections add up to {most}, more than the open-file limit {}{}: accept will fail with EMFILE first (raise the hard limit: LimitNOFILE=, ulimit -Hn{})",
            nofile.limit(),
            if tables == 1 { String::new() } else { format!(" × {tables} shards") },
            if tables == 1 { "; or descriptor_tables: PerShard" } else { "" }
        );
    }
    // Bound and served before the shards start: `/health` answers and
    // `/ready` says 503 until they run.
    let hub = match crate::admin::bind(&compiled) {
        Ok(Some(listener)) => {
            let hub = crate::admin::Hub::new(compiled.clone());
            if let Err(e) = crate::admin::start(listener, hub.clone()) {
                eprintln!("shardgate: {e}");
                return ExitCode::from(1);
            }
            Some(hub)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("shardgate: {e}");
            return ExitCode::from(1);
        }
    };
    // The access-log writer and the span exporter, before the first request.
    crate::observe::configure(&compiled);
    let shards = match shard::start(compiled.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardgate: {e}");
            return ExitCode::from(1);
        }
    };
    let listening: Vec<String> = compiled
        .listeners
        .iter()
        .map(|l| format!("{} on {}", l.name, l.addr))
        .collect();
    eprintln!(
        "shardgate: {} shard(s), listening: {}",
        shards.drivers.len(),
        listening.join(", ")
    );
    start_jwks_refresher(&shards, &compiled);
    if let Some(hub) = &hub {
        hub.shards_started(shards.asker());
        if let Some(a) = &compiled.admin {
            eprintln!("shardgate: admin on http://{} (/metrics, /health, /ready, /config, /upstreams, /shards, /ratelimits, status page at /)", a.addr);
        }
    }
    eprintln!("shardgate: ready");
    on_ready();
    let mut current = compiled;
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                let before = current.generation;
                current = reload(&source, &shards, current);
                if current.generation != before {
                    crate::observe::configure(&current);
                }
                if let Some(hub) = &hub {
                    if current.generation != before {
                        hub.reloaded(current.clone());
                    } else {
                        hub.reload_failed();
                    }
                }
            }
            SIGUSR1 => crate::observe::reopen_logs(),
            _ => {
                if let Some(hub) = &hub {
                    hub.draining();
                }
                eprintln!(
                    "shardgate: shutting down (grace {} ms)",
                    current.shutdown_grace.as_millis()
                );
                let clean = shards.shutdown(current.shutdown_grace);
                if !clean {
                    eprintln!("shardgate: grace period over with requests still running");
                }
                crate::observe::finish(std::time::Duration::from_secs(2));
                eprintln!("shardgate: stopped");
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
}

fn reload(source: &Source, shards: &ShardSet, current: Arc<Compiled>) -> Arc<Compiled> {
    let started = std::time::Instant::now();
    let from = source.clone();
    match shards.in_background(move || from.load()).and_then(|r| r) {
        Ok(new) => {
            let took = started.elapsed();
            let same_listeners = new.listeners.len() == current.listeners.len()
                && new
                    .listeners
                    .iter()
                    .zip(&current.listeners)
                    .all(|(a, b)| a.addr == b.addr && a.balance == b.balance);
            if !same_listeners {
                eprintln!(
                    "shardgate: reload of {} refused: listeners changed (their addresses or balance_connections; restart to change them); keeping the running config",
                    source.name()
                );
                return current;
            }
            let new = Arc::new(new);
            shards.reload(new.clone(), current);
            start_jwks_refresher(shards, &new);
            eprintln!(
                "shardgate: reloaded {}: {} route(s), {} upstream(s); read, checked and compiled in {:.1} ms",
                source.name(),
                new.routes.len(),
                new.upstreams.len(),
                took.as_secs_f64() * 1e3
            );
            new
        }
        Err(e) => {
            eprintln!(
                "shardgate: reload of {} failed; keeping the running config:\n{e}",
                source.name()
            );
            current
        }
    }
}

/// Keeps the JWKS documents of `compiled` fresh on a thread of its own; the
/// thread ends once that config is replaced and dropped.
fn start_jwks_refresher(shards: &ShardSet, compiled: &Arc<Compiled>) {
    let sources = compiled.auth.jwks_sources();
    if sources.is_empty() {
        return;
    }
    let requests = compiled.jwks_requests.clone();
    let generation = compiled.generation;
    let publish = shards.publisher();
    let spawned = std::thread::Builder::new()
        .name("shardgate-jwks".into())
        .spawn(move || {
            crate::auth::jwks::refresher(sources, requests, |authenticator, keys| {
                publish(generation, authenticator, keys)
            })
        });
    if let Err(e) = spawned {
        eprintln!("shardgate: cannot start the JWKS refresher: {e}");
    }
}

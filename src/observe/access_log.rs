//! The access log: one JSON line per request, written by one thread.
//!
//! A shard formats the line when the request finishes and hands it to the
//! writer through its own bounded queue (`try_send`: a full queue drops the
//! line, counted in `shardgate_access_log_dropped_total`). The writer drains
//! every shard's queue into one buffered sink and flushes it when it runs
//! out of lines or at least every [`FLUSH_EVERY`]. It reopens a file on
//! SIGUSR1 (logrotate's `postrotate`) and switches to a new path on a
//! reload that changes `access_log.path`.

use crate::compiled::Compiled;
use crate::config::AccessLog;
use crate::http::RequestHead;
use crate::proxy::Exchange;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Longest a written line stays in the writer's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How long the writer sleeps when every queue is empty.
const IDLE_TICK: Duration = Duration::from_millis(10);
/// Most lines taken from one queue before looking at the next.
const TAKE_AT_ONCE: usize = 1024;
/// Size of the writer's buffer.
const BUFFER: usize = 64 * 1024;
/// How often a file that could not be opened or written is tried again.
const RETRY_OPEN: Duration = Duration::from_secs(1);

/// The access-log line of a finished request (without the newline).
pub fn line(
    compiled: &Compiled,
    listener: usize,
    head: &RequestHead,
    ex: &Exchange<'_>,
    now: SystemTime,
    took: Duration,
) -> Vec<u8> {
    let seen = &ex.seen;
    let mut s = Vec::with_capacity(384);
    s.extend_from_slice(b"{\"time\":\"");
    super::push_rfc3339_millis(&mut s, now);
    s.extend_from_slice(b"\",\"request_id\":");
    super::json_bytes(&mut s, ex.request_id);
    s.extend_from_slice(b",\"trace_id\":");
    let trace_id = match &ex.trace {
        Some(t) => Some(t.trace_id()),
        None => super::trace::incoming_trace_id(head),
    };
    match trace_id {
        Some(id) => {
            s.push(b'"');
            super::push_hex_bytes(&mut s, &id);
            s.push(b'"');
        }
        None => s.extend_from_slice(b"null"),
    }
    s.extend_from_slice(b",\"client\":\"");
    s.extend_from_slice(ex.client_ip_text);
    s.extend_from_slice(b"\",\"listener\":");
    json_opt(
        &mut s,
        compiled.listeners.get(listener).map(|l| l.name.as_str()),
    );
    s.extend_from_slice(b",\"method\":");
    super::json_bytes(&mut s, head.method());
    s.extend_from_slice(b",\"path\":");
    super::json_bytes(&mut s, head.path());
    s.extend_from_slice(b",\"route\":");
    json_opt(
        &mut s,
        seen.route
            .and_then(|r| compiled.routes.get(r))
            .map(|r| r.name.as_str()),
    );
    s.extend_from_slice(b",\"status\":");
    super::push_u64(&mut s, u64::from(seen.status));
    s.extend_from_slice(b",\"bytes_in\":");
    super::push_u64(&mut s, seen.bytes_in);
    s.extend_from_slice(b",\"bytes_out\":");
    super::push_u64(&mut s, seen.bytes_out);
    s.extend_from_slice(b",\"duration_ms\":");
    super::push_millis(&mut s, took);
    match &seen.upstream {
        Some(call) => {
            s.extend_from_slice(b",\"upstream\":");
            json_opt(
                &mut s,
                compiled
                    .upstreams
                    .get(call.upstream)
                    .map(|u| u.name.as_str()),
            );
            s.extend_from_slice(b",\"target\":\"");
            super::push_addr(&mut s, call.target);
            s.extend_from_slice(b"\",\"upstream_ms\":");
            super::push_millis(&mut s, call.took);
            s.extend_from_slice(b",\"upstream_outcome\":\"");
            s.extend_from_slice(call.outcome.label().as_bytes());
            s.push(b'"');
        }
        None => s.extend_from_slice(
            b",\"upstream\":null,\"target\":null,\"upstream_ms\":null,\"upstream_outcome\":null",
        ),
    }
    s.extend_from_slice(b",\"subject\":");
    json_opt(&mut s, seen.subject.as_deref());
    s.extend_from_slice(b",\"rate_limit\":");
    json_opt(&mut s, seen.rate_limit.map(|d| d.label()));
    s.push(b'}');
    s
}

fn json_opt(s: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => super::json_bytes(s, v),
        None => s.extend_from_slice(b"null"),
    }
}

/// What the writer thread is told.
enum Control {
    /// A shard's queue of lines.
    Attach(Receiver<Vec<u8>>),
    /// Where lines go (`None`: the log is off; queued lines are dropped).
    Path(Option<String>),
    /// Reopen the file (SIGUSR1).
    Reopen,
    /// Write out everything queued, flush, then answer.
    Finish(Sender<()>),
}

static CONTROL: OnceLock<Sender<Control>> = OnceLock::new();

/// The writer's control queue; the writer starts on first use.
fn control() -> &'static Sender<Control> {
    CONTROL.get_or_init(|| {
        super::start_worker("shardgate-log", "the access-log writer", |rx| {
            Writer::default().run(&rx)
        })
    })
}

/// Sets the log's destination (starting the writer when the log is on).
pub fn configure(cfg: Option<&AccessLog>) {
    match cfg {
        Some(l) => {
            let _ = control().send(Control::Path(Some(l.path.clone())));
        }
        None => {
            if let Some(c) = CONTROL.get() {
                let _ = c.send(Control::Path(None));
            }
        }
    }
}

/// Asks the writer to reopen its file.
pub fn reopen() {
    if let Some(c) = CONTROL.get() {
        let _ = c.send(Control::Reopen);
    }
}

/// Waits (at most `wait`) until every queued line is written and flushed.
pub fn finish(wait: Duration) {
    if let Some(c) = CONTROL.get() {
        let (tx, rx) = bounded(1);
        if c.send(Control::Finish(tx)).is_ok() {
            let _ = rx.recv_timeout(wait);
        }
    }
}

thread_local! {
    /// This shard thread's queue to the writer, made on its first line.
    static QUEUE: RefCell<Option<Sender<Vec<u8>>>> = const { RefCell::new(None) };
}

/// Hands a line to the writer; false when it was dropped (queue full).
pub fn submit(cfg: &AccessLog, line: Vec<u8>) -> bool {
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if q.is_none() {
            let (tx, rx) = bounded(cfg.queue_lines.max(1));
            if control().send(Control::Attach(rx)).is_err() {
                return false;
            }
            *q = Some(tx);
        }
        q.as_ref().is_some_and(|tx| tx.try_send(line).is_ok())
    })
}

/// The writer thread's state.
#[derive(Default)]
struct Writer {
    queues: Vec<Receiver<Vec<u8>>>,
    path: Option<String>,
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    /// Bytes written since the last flush.
    dirty: bool,
    last_flush: Option<Instant>,
    /// The sink failed; when it was last tried.
    broken_since: Option<Instant>,
    /// Lines lost because the sink failed, since it last worked.
    lost: u64,
}

impl Writer {
    fn run(mut self, control: &Receiver<Control>) {
        loop {
            loop {
                match control.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.drain();
                        self.flush();
                        return;
                    }
                }
            }
            let wrote = self.drain();
            let due = self.last_flush.is_none_or(|t| t.elapsed() >= FLUSH_EVERY);
            if wrote == 0 || due {
                self.flush();
            }
            if wrote == 0 {
                match control.recv_timeout(IDLE_TICK) {
                    Ok(c) => self.handle(c),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
        }
    }

    fn handle(&mut self, c: Control) {
        match c {
            Control::Attach(rx) => self.queues.push(rx),
            Control::Path(p) => {
                if p != self.path {
                    self.drain();
                    self.flush();
                    self.path = p;
                    self.open();
                }
            }
            Control::Reopen => {
                self.drain();
                self.flush();
                self.open();
            }
            Control::Finish(done) => {
                self.drain();
                self.flush();
                let _ = done.send(());
            }
        }
    }

    /// (Re)opens the sink for the current path.
    fn open(&mut self) {
        self.out = None;
        self.broken_since = None;
        let sink: Box<dyn Write + Send> = match self.path.as_deref() {
            None => return,
            Some("stdout") => Box::new(std::io::stdout()),
            Some("stderr") => Box::new(std::io::stderr()),
            Some(file) => match OpenOptions::new().create(true).append(true).open(file) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    eprintln!("shardgate: cannot open the access log {file:?}: {e}; lines are dropped until it opens (tried again every second and on SIGUSR1)");
                    self.broken_since = Some(Instant::now());
                    return;
                }
            },
        };
        if self.lost > 0 {
            eprintln!(
                "shardgate: access log open again; {} line(s) were lost meanwhile",
                self.lost
            );
            self.lost = 0;
        }
        self.out = Some(BufWriter::with_capacity(BUFFER, sink));
    }

    /// Writes what the queues hold; returns how many lines were taken.
    fn drain(&mut self) -> usize {
        if self.out.is_none()
            && self.path.is_some()
            && self.broken_since.is_some_and(|t| t.elapsed() >= RETRY_OPEN)
        {
            self.open();
        }
        let mut taken = 0;
        let mut i = 0;
        while let Some(q) = self.queues.get(i) {
            let mut gone = false;
            for _ in 0..TAKE_AT_ONCE {
                match q.try_recv() {
                    Ok(line) => {
                        taken += 1;
                        write_line(&mut self.out, &line, &mut self.lost, &mut self.broken_since);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if gone {
                // The shard thread ended; what it queued has been written.
                self.queues.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if taken > 0 {
            self.dirty = true;
        }
        taken
    }

    fn flush(&mut self) {
        self.last_flush = Some(Instant::now());
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                eprintln!("shardgate: access log write failed: {e}; lines are dropped until it works again (reopened every second and on SIGUSR1)");
                self.out = None;
                self.broken_since = Some(Instant::now());
            }
        }
    }
}

fn write_line(
    out: &mut Option<BufWriter<Box<dyn Write + Send>>>,
    line: &[u8],
    lost: &mut u64,
    broken_since: &mut Option<Instant>,
) {
    let Some(w) = out else {
        *lost += 1;
        return;
    };
    let r = w.write_all(line).and_then(|()| w.write_all(b"\n"));
    if let Err(e) = r {
        eprintln!("shardgate: access log write failed: {e}; lines are dropped until it works again (reopened every second and on SIGUSR1)");
        *out = None;
        *lost += 1;
        *broken_since = Some(Instant::now());
    }
}

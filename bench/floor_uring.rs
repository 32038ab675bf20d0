//! The HTTP floor on a raw io_uring ring, driven through the `io-uring`
//! crate, with the ring features monoio does not expose switched on one at
//! a time. Run by `scripts/bench.sh` as the `uring-*` targets, beside the
//! monoio floors and HAProxy's TCP relay, to measure what each feature is
//! worth on the plain-proxy test before building it into a shard.
//!
//! The HTTP work is the `http` floor's: both heads parsed with httparse and
//! forwarded as they came, `Content-Length` bodies, one upstream connection
//! per client connection, whole messages of up to 16 KiB (larger ones close
//! the connection: this is a floor, not a proxy). The ring is set up as the
//! shards' is (SINGLE_ISSUER + DEFER_TASKRUN, 1,024 entries), one event-loop
//! turn is one `io_uring_enter` that submits what the last turn queued and
//! waits for at least one completion.
//!
//! Mode `uring` followed by `+feature`s:
//! - `fixed`: both sockets registered in the ring's file table, every
//!   operation on them through its index (`IOSQE_FIXED_FILE`: no `fget`);
//! - `pollfirst`: `IORING_RECVSEND_POLL_FIRST` on every receive, so that a
//!   read that would find nothing is armed as a poll without being tried;
//! - `multishot`: one multishot receive armed per socket for its whole life,
//!   its bytes landing in buffers the kernel takes from a provided-buffer
//!   ring (copied out and the buffer handed back at once);
//! - `early`: each read posted together with the write before it (the
//!   answer's read with the request's write, the next request's read with
//!   the answer's write), as the gateway and the `duplex` floor do.
//!
//! Without `early` (and without `multishot`, whose reads are always armed)
//! every operation waits for the one before it, as the `http` floor does.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Each direction's buffer: a message must fit in it.
const BUF: usize = 16 * 1024;
/// The provided-buffer ring: how many buffers, and each one's size.
const RING_BUFS: u16 = 4096;
const RING_BUF_LEN: usize = 4096;
const GROUP: u16 = 7;
/// The listener's completions.
const ACCEPT: u64 = u64::MAX;
const ENOBUFS: i32 = 105;

#[derive(Clone, Copy, Default, Debug)]
pub struct Features {
    fixed: bool,
    poll_first: bool,
    multishot: bool,
    early: bool,
}

impl Features {
    /// `uring`, `uring+fixed+pollfirst`, ..., `uring+all`.
    pub fn parse(mode: &str) -> Option<Features> {
        let mut parts = mode.split('+');
        if parts.next()? != "uring" {
            return None;
        }
        let mut f = Features::default();
        for part in parts {
            match part {
                "fixed" => f.fixed = true,
                "pollfirst" => f.poll_first = true,
                "multishot" => f.multishot = true,
                "early" => f.early = true,
                "all" => {
                    f = Features {
                        fixed: true,
                        poll_first: true,
                        multishot: true,
                        early: true,
                    }
                }
                _ => return None,
            }
        }
        Some(f)
    }
}

/// One direction of a connection: request (client → upstream) or answer
/// (upstream → client).
struct Dir {
    buf: Box<[u8]>,
    /// Bytes received and not yet forwarded.
    fill: usize,
    /// The whole current message's length, 0 while its head is incomplete.
    msg: usize,
    /// Of the current message, bytes already written.
    sent: usize,
    sending: bool,
    reading: bool,
    /// Where the posted read writes (the data may be moved down after it).
    read_at: usize,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            buf: vec![0; BUF].into_boxed_slice(),
            fill: 0,
            msg: 0,
            sent: 0,
            sending: false,
            reading: false,
            read_at: 0,
        }
    }
}

struct Conn {
    client: TcpStream,
    up: TcpStream,
    dirs: [Dir; 2],
    in_flight: u32,
    dead: bool,
}

/// The kernel's `struct io_uring_buf`; the ring's tail is entry 0's `resv`.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

struct BufRing {
    entries: *mut BufEntry,
    memory: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> std::io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(
            RING_BUFS as usize * std::mem::size_of::<BufEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        // SAFETY: a non-zero size; the memory lives as long as the process
        // (the floor never unregisters the group).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut BufEntry;
        if entries.is_null() {
            return Err(std::io::Error::other("buffer ring allocation"));
        }
        // SAFETY: `entries` holds RING_BUFS entries, page-aligned, and is
        // never freed.
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, RING_BUFS, GROUP)?;
        }
        let mut r = BufRing {
            entries,
            memory: vec![0; RING_BUFS as usize * RING_BUF_LEN].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..RING_BUFS {
            r.give(bid);
        }
        Ok(r)
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let at = bid as usize * RING_BUF_LEN;
        &self.memory[at..at + len.min(RING_BUF_LEN)]
    }

    /// Hands buffer `bid` back to the kernel.
    fn give(&mut self, bid: u16) {
        let mask = RING_BUFS - 1;
        let addr = self.memory.as_ptr() as u64 + (bid as usize * RING_BUF_LEN) as u64;
        // SAFETY: the index is masked into the ring; the kernel reads only
        // entries below the tail, and this one is above it until the store
        // below publishes it.
        unsafe {
            let e = self.entries.add((self.tail & mask) as usize);
            (*e).addr = addr;
            (*e).len = RING_BUF_LEN as u32;
            (*e).bid = bid;
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: entry 0's `resv` is the ring's tail (offset 14), a u16
        // the kernel reads with acquire ordering.
        let tail = unsafe { &*((self.entries as *mut u8).add(14) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

struct Floor {
    ring: IoUring,
    f: Features,
    listener: TcpListener,
    upstream: SocketAddr,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    bufs: Option<BufRing>,
}

/// Slots in the file table: two per connection.
const MAX_CONNS: usize = 8192;

pub fn run(f: Features, listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let mut builder = IoUring::builder();
    builder.setup_single_issuer().setup_defer_taskrun();
    let ring = builder.build(1024)?;
    if f.fixed {
        ring.submitter()
            .register_files_sparse(2 * MAX_CONNS as u32)?;
    }
    let bufs = if f.multishot {
        Some(BufRing::new(&ring)?)
    } else {
        None
    };
    let listener = bind(listen)?;
    eprintln!("floor_proxy uring {f:?} listening on {listen}");
    let mut floor = Floor {
        ring,
        f,
        listener,
        upstream,
        conns: Vec::new(),
        free: Vec::new(),
        bufs,
    };
    floor.post_accept();
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    loop {
        match floor.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(4) || e.raw_os_error() == Some(16) => {}
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            floor
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &done {
            if data == ACCEPT {
                floor.accepted(res);
                continue;
            }
            let id = (data >> 3) as usize;
            let d = ((data >> 1) & 1) as usize;
            if data & 1 == 1 {
                floor.wrote(id, d, res);
            } else {
                floor.read(id, d, res, flags);
            }
            floor.free_if_done(id);
        }
    }
}

/// Binds, waiting up to two seconds for a listener on the same address to
/// go: a ring's operations, its pending accept among them, are torn down
/// after its process exits, so the port of a floor just stopped stays taken
/// for a moment.
fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(listen) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Floor {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points at is a connection's own
            // boxed buffer, kept until the connection's last operation ends.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }

    fn post_accept(&mut self) {
        let e = opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(ACCEPT);
        self.push(e);
    }

    fn accepted(&mut self, res: i32) {
        self.post_accept();
        if res < 0 {
            return;
        }
        // SAFETY: the kernel just handed this descriptor to us.
        let client = unsafe { TcpStream::from_raw_fd(res) };
        let Ok(up) = TcpStream::connect(self.upstream) else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.conns.len() < MAX_CONNS => {
                self.conns.push(None);
                self.conns.len() - 1
            }
            None => return,
        };
        if self.f.fixed {
            let fds = [client.as_raw_fd(), up.as_raw_fd()];
            if self
                .ring
                .submitter()
                .register_files_update(2 * id as u32, &fds)
                .is_err()
            {
                self.free.push(id);
                return;
            }
        }
        self.conns[id] = Some(Conn {
            client,
            up,
            dirs: [Dir::new(), Dir::new()],
            in_flight: 0,
            dead: false,
        });
        self.post_read(id, 0);
        if self.f.multishot {
            self.post_read(id, 1);
        }
    }

    /// The entry for an operation on connection `id`'s side `side` (0
    /// client, 1 upstream).
    fn fd_entry(&self, id: usize, side: usize, op: Op) -> Option<squeue::Entry> {
        let c = self.conns[id].as_ref()?;
        let raw: RawFd = if side == 0 {
            c.client.as_raw_fd()
        } else {
            c.up.as_raw_fd()
        };
        let slot = (2 * id + side) as u32;
        macro_rules! build {
            ($fd:expr) => {
                match op {
                    Op::Read(ptr, len) => opcode::Recv::new($fd, ptr, len).build(),
                    Op::ReadMulti => opcode::RecvMulti::new($fd, GROUP).build(),
                    Op::Write(ptr, len) => opcode::Send::new($fd, ptr, len).build(),
                }
            };
        }
        Some(if self.f.fixed {
            build!(types::Fixed(slot))
        } else {
            build!(types::Fd(raw))
        })
    }

    fn post_read(&mut self, id: usize, d: usize) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        if c.dead || c.dirs[d].reading {
            return;
        }
        let dir = &mut c.dirs[d];
        let op = if self.f.multishot {
            Op::ReadMulti
        } else {
            if dir.fill == BUF {
                self.kill(id);
                return;
            }
            dir.read_at = dir.fill;
            // SAFETY (of the pointer's later use): the buffer is boxed and
            // outlives the operation (see `push`).
            let ptr = unsafe { dir.buf.as_mut_ptr().add(dir.fill) };
            Op::Read(ptr, (BUF - dir.fill) as u32)
        };
        dir.reading = true;
        c.in_flight += 1;
        let Some(mut e) = self.fd_entry(id, d, op) else {
            return;
        };
        if self.f.poll_first && !self.f.multishot {
            set_poll_first(&mut e);
        }
        self.push(e.user_data(((id as u64) << 3) | ((d as u64) << 1)));
    }

    fn post_write(&mut self, id: usize, d: usize) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        let dir = &mut c.dirs[d];
        let ptr = dir.buf[dir.sent..].as_ptr();
        let len = (dir.msg - dir.sent) as u32;
        c.in_flight += 1;
        if let Some(e) = self.fd_entry(id, 1 - d, Op::Write(ptr, len)) {
            self.push(e.user_data(((id as u64) << 3) | ((d as u64) << 1) | 1));
        }
    }

    /// Sends the direction's next message once it is whole; reads more when
    /// it is not.
    fn forward(&mut self, id: usize, d: usize) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        let dir = &mut c.dirs[d];
        if c.dead || dir.sending {
            return;
        }
        if dir.msg == 0 {
            match super::head(&dir.buf[..dir.fill], d == 0) {
                Ok(Some((head, body))) if head + body <= BUF => dir.msg = head + body,
                Ok(None) => return self.post_read(id, d),
                _ => return self.kill(id),
            }
        }
        if dir.fill < dir.msg {
            return self.post_read(id, d);
        }
        dir.sending = true;
        dir.sent = 0;
        self.post_write(id, d);
        if self.f.early {
            self.post_read(id, 1 - d);
        }
    }

    fn wrote(&mut self, id: usize, d: usize, res: i32) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        c.in_flight -= 1;
        if res <= 0 {
            return self.kill(id);
        }
        let dir = &mut c.dirs[d];
        dir.sent += res as usize;
        if dir.sent < dir.msg {
            return self.post_write(id, d);
        }
        dir.buf.copy_within(dir.msg..dir.fill, 0);
        dir.fill -= dir.msg;
        dir.msg = 0;
        dir.sending = false;
        let more = dir.fill > 0;
        if !self.f.early {
            self.post_read(id, 1 - d);
        }
        if more {
            self.forward(id, d);
        }
    }

    fn read(&mut self, id: usize, d: usize, res: i32, flags: u32) {
        let multishot = self.f.multishot;
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        if !multishot || !cqueue::more(flags) {
            c.in_flight -= 1;
            c.dirs[d].reading = false;
        }
        if multishot && res == -ENOBUFS {
            return self.post_read(id, d);
        }
        if res <= 0 || c.dead {
            if let (Some(bid), Some(bufs)) = (cqueue::buffer_select(flags), self.bufs.as_mut()) {
                bufs.give(bid);
            }
            return self.kill(id);
        }
        let n = res as usize;
        let dir = &mut c.dirs[d];
        if multishot {
            let (Some(bid), Some(bufs)) = (cqueue::buffer_select(flags), self.bufs.as_mut()) else {
                return self.kill(id);
            };
            if dir.fill + n > BUF {
                bufs.give(bid);
                return self.kill(id);
            }
            dir.buf[dir.fill..dir.fill + n].copy_from_slice(bufs.bytes(bid, n));
            bufs.give(bid);
            dir.fill += n;
            if !dir.reading {
                self.post_read(id, d);
            }
        } else {
            if dir.read_at != dir.fill {
                dir.buf.copy_within(dir.read_at..dir.read_at + n, dir.fill);
            }
            dir.fill += n;
        }
        self.forward(id, d);
    }

    fn kill(&mut self, id: usize) {
        if let Some(c) = self.conns[id].as_mut() {
            if !c.dead {
                c.dead = true;
                let _ = c.client.shutdown(std::net::Shutdown::Both);
                let _ = c.up.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn free_if_done(&mut self, id: usize) {
        let done = matches!(&self.conns[id], Some(c) if c.dead && c.in_flight == 0);
        if !done {
            return;
        }
        if self.f.fixed {
            let _ = self
                .ring
                .submitter()
                .register_files_update(2 * id as u32, &[-1, -1]);
        }
        self.conns[id] = None;
        self.free.push(id);
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read(*mut u8, u32),
    ReadMulti,
    Write(*const u8, u32),
}

/// `IORING_RECVSEND_POLL_FIRST` goes in the entry's `ioprio` (bytes 2–3 of
/// the kernel's `struct io_uring_sqe`), which this crate version's `Recv`
/// does not let one set.
fn set_poll_first(e: &mut squeue::Entry) {
    // SAFETY: `Entry` is `#[repr(C)]` around the kernel's 64-byte
    // `io_uring_sqe`, whose `ioprio` is the u16 at offset 2.
    unsafe {
        let p = (e as *mut squeue::Entry as *mut u8).add(2) as *mut u16;
        *p |= 1;
    }
}

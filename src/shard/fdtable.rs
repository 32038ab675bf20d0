//! A descriptor table per shard (`descriptor_tables: PerShard`).
//!
//! Linux's open-file limit (`RLIMIT_NOFILE`) bounds the descriptor numbers
//! of one descriptor table, and a process's threads share one table. A shard
//! thread that calls `unshare(CLONE_FILES)` gets a table of its own (a copy
//! of the process's at that moment), so the limit then bounds each shard's
//! descriptors separately. This fits the shards as they are: a shard opens
//! and closes every descriptor it uses itself (its ring, its client and
//! upstream connections), its listeners are the only descriptors it is
//! handed, and the other threads (admin, health checks, access log) keep the
//! process's table and reach the shards through channels only.

use std::os::fd::RawFd;
use std::sync::Mutex;

/// Thread ids of the shards that have a table of their own: read only when
/// the admin listener counts open descriptors.
static OWN_TABLES: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Gives the calling thread a descriptor table of its own, then closes the
/// copies it holds of every descriptor but stdin, stdout, stderr and `keep`
/// (other shards' listeners, the admin listener: left open here, a closed
/// listener would stay in its port's SO_REUSEPORT group). Returns how many
/// it closed.
pub fn separate(keep: &[RawFd]) -> Result<usize, String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES)
        .map_err(|e| format!("unshare(CLONE_FILES) failed: {e}"))?;
    // Listed first and closed after: the listing's own descriptor is gone
    // by then (its close below fails and is not counted).
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/thread-self/fd")
        .map_err(|e| format!("cannot list /proc/thread-self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let closed = listed
        .into_iter()
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .filter(|fd| nix::unistd::close(*fd).is_ok())
        .count();
    let tid = nix::unistd::gettid().as_raw();
    OWN_TABLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(tid);
    Ok(closed)
}

/// Closes the process table's copies of descriptors that shards with tables
/// of their own took over (their listeners), once every shard has separated.
pub fn release(handed_over: &[RawFd]) {
    for fd in handed_over {
        let _ = nix::unistd::close(*fd);
    }
}

/// Open descriptors of the process: its table's, plus those of each shard
/// with a table of its own.
pub fn open_descriptors() -> u64 {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count() as u64);
    let own = OWN_TABLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    count("/proc/self/fd")
        + own
            .iter()
            .map(|tid| count(&format!("/proc/self/task/{tid}/fd")))
            .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_separated_thread_keeps_only_what_it_was_given() {
        let kept = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (kept_fd, other_fd) = (kept.as_raw_fd(), other.as_raw_fd());
        let seen = std::thread::spawn(move || {
            let closed = separate(&[kept_fd]).expect("separate");
            let listed =
                |fd: RawFd| std::path::Path::new(&format!("/proc/thread-self/fd/{fd}")).exists();
            (
                closed,
                listed(kept_fd),
                listed(other_fd),
                kept.local_addr().is_ok(),
            )
        })
        .join()
        .expect("thread");
        assert!(seen.0 >= 1, "the other listener's copy was closed");
        assert!(
            seen.1 && seen.3,
            "the kept listener still works in the thread"
        );
        assert!(
            !seen.2,
            "the other listener is gone from the thread's table"
        );
        // The process's table still has the other listener.
        assert!(other.local_addr().is_ok());
    }
}

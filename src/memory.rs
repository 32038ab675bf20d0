//! Memory handed back to the system, and huge pages kept out of the heap.
//!
//! The allocator keeps pages freed by a burst (many requests at once, then
//! many connections going idle) and returns them only when it is called
//! again; a shard that has gone quiet would hold them for good. Each shard
//! asks it, once a second, to give back what has been free long enough.
//!
//! The allocator also asks the kernel for transparent huge pages on its
//! arenas (`madvise(MADV_HUGEPAGE)`). With the kernel's default `defrag`
//! setting, a fault in such a region zeroes 2 MiB and may compact memory
//! first, synchronously, on the shard's thread: a burst of new connections
//! then stalls the shard long enough for the listen queue to overflow
//! (bench/RESULTS.md §27). The gateway turns them off for itself at start.

/// Returns the calling thread's long-free allocator pages to the system.
#[allow(unsafe_code)]
pub fn give_back() {
    // SAFETY: `mi_collect` takes no pointers and may be called at any time
    // from any thread; it only releases memory nothing refers to.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// What [`keep_huge_pages_out`] did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// Turned off for this process (`PR_SET_THP_DISABLE`).
    Off,
    /// Left as the system has them: `MIMALLOC_ALLOW_THP` asks for them.
    Allowed,
    /// The kernel refused the request; the system's setting stays.
    Refused(i32),
}

impl std::fmt::Display for HugePages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HugePages::Off => f.write_str("transparent huge pages off for the heap (MIMALLOC_ALLOW_THP=1 keeps them)"),
            HugePages::Allowed => f.write_str("transparent huge pages left to the system (MIMALLOC_ALLOW_THP)"),
            HugePages::Refused(errno) => write!(f, "transparent huge pages: prctl(PR_SET_THP_DISABLE) refused (errno {errno}); left to the system"),
        }
    }
}

/// Turns transparent huge pages off for this process before the shards
/// start, unless `MIMALLOC_ALLOW_THP` is set to something other than `0`
/// (the allocator's own switch for them).
#[allow(unsafe_code)]
pub fn keep_huge_pages_out() -> HugePages {
    if std::env::var("MIMALLOC_ALLOW_THP").is_ok_and(|v| v.trim() != "0") {
        return HugePages::Allowed;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a
    // flag of this process's address space; no memory is touched.
    let r = unsafe { nix::libc::prctl(nix::libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r == 0 {
        HugePages::Off
    } else {
        HugePages::Refused(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_name_the_switch() {
        assert!(HugePages::Off.to_string().contains("MIMALLOC_ALLOW_THP=1"));
        assert!(HugePages::Refused(22).to_string().contains("errno 22"));
    }
}

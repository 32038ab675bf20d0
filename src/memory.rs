//! Memory handed back to the system.
//!
//! The allocator keeps pages freed by a burst (many requests at once, then
//! many connections going idle) and returns them only when it is called
//! again; a shard that has gone quiet would hold them for good. Each shard
//! asks it, once a second, to give back what has been free long enough.

/// Returns the calling thread's long-free allocator pages to the system.
#[allow(unsafe_code)]
pub fn give_back() {
    // SAFETY: `mi_collect` takes no pointers and may be called at any time
    // from any thread; it only releases memory nothing refers to.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

//! Shards: pinned threads, each running its own monoio runtime with its own
//! listeners, route tables and pools, steered by control messages.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod notify;
mod run;
mod state;

pub use notify::Notify;
pub use run::{parse_cpulist, plan_cores, start, Control, Driver, ShardSet};
pub use state::{Shard, ShardConfig};

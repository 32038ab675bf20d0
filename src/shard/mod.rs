//! Shards: pinned threads, each running its own monoio runtime with its own
//! listeners, route tables and pools, steered by control messages.
mod background;
mod notify;
mod run;
mod state;

pub use notify::Notify;
pub use run::{parse_cpulist, plan_cores, start, Control, Driver, ShardSet};
pub use state::{Shard, ShardConfig};

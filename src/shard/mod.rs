//! Shards: pinned threads, each running its own monoio runtime with its own
//! listeners, route tables and pools, steered by control messages.
mod background;
mod fdtable;
mod nofile;
mod notify;
mod report;
mod run;
mod state;

pub use fdtable::open_descriptors;
pub use nofile::{nofile_target, raise_nofile_limit, NofileOutcome};
pub use notify::Notify;
pub use report::{Detail, ListenerReport, PoolReport, ShardReport};
pub use run::{parse_cpulist, plan_cores, start, Asker, Control, Driver, ShardSet};
pub use state::{ConnectionSlot, ListenerStats, Shard, ShardConfig};

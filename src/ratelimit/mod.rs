//! Rate limiting. So far: the algorithms, as pure functions of state and
//! time ([`algorithm`]), and the bounded per-shard key table ([`table`]);
//! key extraction, the pipeline stage, gossip and the Redis policy build on
//! them.

pub mod algorithm;
pub mod table;

//! Rate limiting. So far: the algorithms, as pure functions of state and
//! time ([`algorithm`]); keys, per-shard tables, gossip and the Redis policy
//! build on them.

pub mod algorithm;

//! Rate limiting. So far: the algorithms, as pure functions of state and
//! time ([`algorithm`]), key extraction with trusted-proxy handling of
//! `X-Forwarded-For` ([`key`]), and the bounded per-shard key table
//! ([`table`]). The pipeline stage, gossip and the Redis policy build on them.

pub mod algorithm;
pub mod key;
pub mod redis;
pub mod resp;
pub mod table;

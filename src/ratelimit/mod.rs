//! Rate limiting: the algorithms as pure functions of state and time
//! ([`algorithm`]), key extraction with trusted-proxy handling of
//! `X-Forwarded-For` ([`key`]), the bounded per-shard key table ([`table`]),
//! the compiled config ([`plan`]), the shard's limiter with quota gossip
//! between shards ([`limiter`]), and the Redis client for limits shared by
//! several gateway instances ([`redis`], [`resp`]).
pub mod algorithm;
pub mod key;
pub mod limiter;
pub mod plan;
pub mod redis;
pub mod resp;
pub mod stage;
pub mod table;

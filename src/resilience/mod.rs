//! Containing failing and slow backends: target health (active checks and
//! outlier ejection, decided host-wide on the control side) and balancing
//! (weights, peak EWMA, consistent hashing).

pub mod balance;
pub mod health;
pub mod outlier;
pub mod targets;

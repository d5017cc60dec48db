//! Scenarios A (sever storm), B (half-open) and C (outage) of issue 11 for
//! both adapters, with the default configuration, through the chaos proxy;
//! they print the recovery figures docs/PERFORMANCE.md quotes
//! (`cargo test --all-features --test recovery -- --nocapture`).

#[path = "../mqtt_util/mod.rs"]
mod mqtt_util;
#[path = "../support/mod.rs"]
mod support;

mod amqp_recovery;
mod amqp_sever;
mod mqtt_recovery;
mod mqtt_storm;

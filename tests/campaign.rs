//! The short fault campaign (CI): a few fixed seeds of `examples/campaign`
//! on both adapters, run one after the other (see docs/campaign.md).
//!
//! This binary holds only this test: a memory alarm is broker-wide, so
//! nothing else may run beside it.
#![cfg(all(feature = "amqp", feature = "mqtt"))]

#[path = "campaign/mod.rs"]
mod campaign;
mod support;

use campaign::schedule::Adapter;
use campaign::{Options, checker, run_campaign};
use support::brokers;

/// Quick seeds whose schedules draw every fault between them (with alarms
/// allowed): AMQP blackhole, sever, channel errors, broker close, refuse,
/// client-to-broker drop, memory alarm; MQTT sever, poison, drop,
/// blackhole, slow consumer.
const SEEDS: &[u64] = &[4, 5, 6, 7];

#[test]
fn fault_campaign() {
    checker::self_check().expect("the checker catches what it must");
    let mut adapters = Vec::new();
    if brokers::require("AMQP", brokers::amqp_available()) {
        adapters.push(Adapter::Amqp);
    }
    if brokers::require("mosquitto binary", support::mosquitto::binary_available()) {
        adapters.push(Adapter::Mqtt);
    }
    if adapters.is_empty() {
        return;
    }
    let summary = run_campaign(&Options {
        seeds: SEEDS.to_vec(),
        adapters,
        quick: true,
        alarms: true,
    });
    summary.print();
    assert!(summary.runs() > 0, "no campaign run could be made");
    assert!(
        !summary.failed(),
        "the campaign found violations (seeds and schedules above)"
    );
}

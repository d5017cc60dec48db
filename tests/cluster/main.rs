//! A three-node RabbitMQ cluster (`.ci/rabbit-cluster.sh`, nodes
//! 127.0.0.1:5681..5683): the infrastructure itself with plain lapin, then
//! engines that know all three nodes (`cargo test --all-features --test
//! cluster`). Without the cluster the tests skip, unless
//! `REDIAL_REQUIRE_BROKERS` is set.

#[path = "../support/mod.rs"]
mod support;

mod amqp;
mod infra;

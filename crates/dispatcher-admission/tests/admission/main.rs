//! Integration tests of the admission engine: one conformance suite run against the in-process store, a
//! private redis-server and a 3-master Redis Cluster (spawned by testkit), plus a differential property test.

mod coalesce;
mod common;
mod conformance;
mod corruption;
mod differential;
mod fairness;
mod forwarder;

//! End-to-end tests of the HTTP API: the app served on a real loopback listener, a private redis-server
//! behind it (testkit), a promoter beside it, and a hyper client in front. No mocks, no in-process store.

mod admin;
mod bad_input;
mod common;
mod edge;
mod flow;
mod fuzz;
mod limits;
mod ops;
mod store_down;

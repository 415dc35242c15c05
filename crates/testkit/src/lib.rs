//! Spawns private `redis-server`, Redis Cluster and PostgreSQL instances for tests and benchmarks.
//!
//! Every server runs on free loopback ports in its own temporary directory
//! (`<temp_dir>/dispatcher-testkit-<pid>-<n>`) and is torn down on drop: the processes are
//! killed and the directory is removed. A server kept in a `static` (never dropped) is killed
//! when the process exits, and the servers of a test process that was SIGKILLed are reaped by
//! the next process that starts one. Nothing here needs a client library: readiness checks
//! and the small [`RespConnection`] helper speak RESP over a plain [`std::net::TcpStream`],
//! and [`Postgres::psql`] shells out to `psql`.
//!
//! ```no_run
//! # fn main() -> testkit::Result<()> {
//! let redis = testkit::RedisServer::start()?;
//! redis.command(&["SET", "k", "v"])?;
//! assert_eq!(redis.command(&["GET", "k"])?.as_text().as_deref(), Some("v"));
//!
//! let pg = testkit::Postgres::start()?;
//! assert_eq!(pg.psql("select 1")?, "1");
//! # Ok(())
//! # }
//! ```

mod cluster;
mod error;
mod postgres;
mod redis;
mod resp;
mod sys;
mod util;

pub use cluster::RedisCluster;
pub use error::{Error, Result};
pub use postgres::Postgres;
pub use redis::{RedisOptions, RedisServer};
pub use resp::{RespConnection, RespValue, command};
pub use util::{free_port, free_port_with_bus, process_alive, silent_server, wait_until};

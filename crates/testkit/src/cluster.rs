//! A private Redis Cluster of N masters (no replicas), each node a [`RedisServer`].

use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::redis::{RedisOptions, RedisServer, redis_binary};
use crate::resp::{RespConnection, RespValue};
use crate::util;

/// How long the cluster may take to report `cluster_state:ok` on every node.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many -MOVED/-ASK redirections [`RedisCluster::command`] follows.
const MAX_REDIRECTS: usize = 5;

/// A Redis Cluster on 127.0.0.1: N masters with all 16384 slots assigned, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3) on free ports whose bus ports (+10000) are free too,
    /// joins them with `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok` and knows all the others.
    pub fn start(masters: usize) -> Result<Self> {
        if masters < 3 {
            return Err(Error::State(format!(
                "a Redis Cluster needs at least 3 masters (redis-cli --cluster create refuses \
                 fewer); asked for {masters}"
            )));
        }
        let cli = redis_binary("redis-cli")?;
        let options = RedisOptions {
            aof: false,
            extra_args: [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            .map(String::from)
            .to_vec(),
        };
        let nodes = (0..masters)
            .map(|_| RedisServer::launch(options.clone(), util::free_port_with_bus))
            .collect::<Result<Vec<_>>>()?;
        let cluster = Self { nodes };

        let mut create = Command::new(cli);
        create
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(RedisServer::addr))
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        util::run(&mut create)?;

        let expected_nodes = format!("cluster_known_nodes:{masters}");
        for node in &cluster.nodes {
            let mut last = String::new();
            let ready = util::wait_until(READY_TIMEOUT, || {
                last = match node.command(&["CLUSTER", "INFO"]) {
                    Ok(info) => info.as_text().unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                last.lines().any(|l| l.trim() == "cluster_state:ok")
                    && last.lines().any(|l| l.trim() == expected_nodes)
            });
            if !ready {
                return Err(Error::NotReady {
                    what: format!("Redis Cluster node {} (CLUSTER INFO: {last})", node.addr()),
                    timeout: READY_TIMEOUT,
                    log: node.log_path(),
                    log_tail: util::log_tail(&[&node.log_path()], 20),
                });
            }
        }
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The client port of every node (bus ports are these + 10000).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The nodes themselves, e.g. to kill or restart one.
    pub fn servers(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes.
    pub fn servers_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Sends one command to the first node and follows -MOVED / -ASK redirections to the node
    /// that owns the key's slot.
    pub fn command(&self, args: &[&str]) -> Result<RespValue> {
        let first = self
            .nodes
            .first()
            .ok_or_else(|| Error::State("cluster has no nodes".into()))?;
        let mut addr = first.addr();
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut conn = RespConnection::connect(addr.as_str())?;
            if asking {
                conn.command(&["ASKING"])?;
            }
            match conn.command(args) {
                Err(Error::Redis(message)) => {
                    let mut words = message.split_whitespace();
                    match (words.next(), words.nth(1)) {
                        (Some("MOVED"), Some(target)) => {
                            addr = target.to_owned();
                            asking = false;
                        }
                        (Some("ASK"), Some(target)) => {
                            addr = target.to_owned();
                            asking = true;
                        }
                        _ => return Err(Error::Redis(message)),
                    }
                }
                other => return other,
            }
        }
        Err(Error::Redis(format!(
            "more than {MAX_REDIRECTS} redirections for {}",
            args.first().copied().unwrap_or_default()
        )))
    }
}

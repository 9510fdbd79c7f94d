//! The broker's properties, in Kafka's names: one table that serves parsing (the runtime's
//! `server.properties` and `--override`), `sluice serve --help`, DescribeConfigs on the broker
//! resource, and the README's table (a test keeps the README equal to [`markdown_table`]).
//!
//! Each property says how it is applied: to the core's [`NodeConfig`], by the runtime (listeners,
//! data directory, the quorum's voters: things core never touches), or not at all (Kafka
//! properties Sluice accepts so that a Kafka `server.properties` starts unchanged, with the
//! reason it needs none). A value is checked against its kind before it is applied, so a
//! malformed value of any property stops start-up with an error naming it.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::config::NodeConfig;
use crate::types::BrokerId;

/// A property's type, as DescribeConfigs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

impl Kind {
    /// DescribeConfigs' `config_type`.
    pub fn config_type(self) -> i8 {
        match self {
            Kind::Boolean => 1,
            Kind::String => 2,
            Kind::Int => 3,
            Kind::Long => 5,
            Kind::Double => 6,
            Kind::List => 7,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Boolean => "boolean",
            Kind::String => "string",
            Kind::Int => "int",
            Kind::Long => "long",
            Kind::Double => "double",
            Kind::List => "list",
        }
    }

    /// Whether `value` is a value of this kind (Kafka's parsing: an int is 32 bits).
    pub fn check(self, value: &str) -> Result<(), String> {
        let ok = match self {
            Kind::Boolean => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
            Kind::Int => value.parse::<i32>().is_ok(),
            Kind::Long => value.parse::<i64>().is_ok(),
            Kind::Double => value.parse::<f64>().is_ok_and(f64::is_finite),
            Kind::String | Kind::List => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{value:?} is not a valid {}", self.name()))
        }
    }
}

/// Who acts on a property.
#[derive(Clone, Copy)]
pub enum Apply {
    /// Sets the core's configuration; the value has been checked against the kind.
    Node(fn(&mut NodeConfig, &str) -> Result<(), String>),
    /// The runtime reads it (sockets, files, the quorum's addresses).
    Runtime,
    /// Accepted and reported, but Sluice needs no such setting (the doc says why).
    Inert,
}

/// One broker property.
pub struct Property {
    pub name: &'static str,
    pub kind: Kind,
    /// The value in force when the property is not set, given the rest of the configuration
    /// (`advertised.listeners` follows the listener; `log.retention.ms` follows
    /// `log.retention.hours`).
    pub default: fn(&NodeConfig) -> String,
    pub apply: Apply,
    /// Whether it can be changed on a running broker (AlterConfigs, IncrementalAlterConfigs on
    /// the broker resource, per broker or cluster-wide): only properties the core reads when
    /// it acts (directly or through topics' settings), so a change takes effect at once.
    pub dynamic: bool,
    pub doc: &'static str,
}

fn num<T: FromStr>(v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("{v:?} is not a valid number"))
}

fn at_least<T: FromStr + PartialOrd + std::fmt::Display>(v: &str, min: T) -> Result<T, String> {
    let n = num::<T>(v)?;
    if n < min {
        return Err(format!("must be at least {min}, not {v}"));
    }
    Ok(n)
}

fn boolean(v: &str) -> Result<bool, String> {
    Kind::Boolean.check(v)?;
    Ok(v.eq_ignore_ascii_case("true"))
}

fn ratio(v: &str) -> Result<f64, String> {
    let r: f64 = num(v)?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Every broker property Sluice knows. The order is the order of application, so of the
/// synonyms the most precise wins, as in Kafka (`log.retention.ms` over `.minutes` over
/// `.hours`; `node.id` over `broker.id`).
pub static BROKER_PROPERTIES: &[Property] = &[
    // Identity and listeners.
    Property {
        name: "broker.id",
        kind: Kind::Int,
        default: |c| s(c.node_id.0),
        apply: Apply::Node(|c, v| {
            c.node_id = BrokerId(num(v)?);
            Ok(())
        }),
        dynamic: false,
        doc: "This node's id (the older name of node.id)",
    },
    Property {
        name: "node.id",
        kind: Kind::Int,
        default: |c| s(c.node_id.0),
        apply: Apply::Node(|c, v| {
            c.node_id = BrokerId(num(v)?);
            Ok(())
        }),
        dynamic: false,
        doc: "This node's id, unique in the cluster and one of controller.quorum.voters",
    },
    Property {
        name: "process.roles",
        kind: Kind::List,
        default: |_| s("broker,controller"),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "Sluice runs combined nodes only: broker,controller",
    },
    Property {
        name: "listeners",
        kind: Kind::List,
        default: |_| s("PLAINTEXT://127.0.0.1:9092"),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "NAME://host:port for clients, and for the controller listener in a cluster",
    },
    Property {
        name: "advertised.listeners",
        kind: Kind::List,
        default: |c| format!("PLAINTEXT://{}:{}", c.advertised_host, c.advertised_port),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "The address clients are told to connect to (default: the client listener)",
    },
    Property {
        name: "controller.listener.names",
        kind: Kind::List,
        default: |_| s("CONTROLLER"),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "Which of listeners the metadata quorum and peers use",
    },
    Property {
        name: "controller.quorum.voters",
        kind: Kind::List,
        default: |_| s(""),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "id@host:port of every voter's controller listener; empty: a cluster of one",
    },
    Property {
        name: "controller.quorum.bootstrap.servers",
        kind: Kind::List,
        default: |_| s(""),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "Dynamic quorums (KIP-853) are not supported: give controller.quorum.voters",
    },
    Property {
        name: "inter.broker.listener.name",
        kind: Kind::String,
        default: |_| s("PLAINTEXT"),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; replication runs over the controller listener's peer connections",
    },
    Property {
        name: "listener.security.protocol.map",
        kind: Kind::List,
        default: |_| s("PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; every listener is PLAINTEXT",
    },
    Property {
        name: "broker.rack",
        kind: Kind::String,
        default: |_| s(""),
        apply: Apply::Node(|c, v| {
            c.rack = Some(v.to_string()).filter(|r| !r.is_empty());
            Ok(())
        }),
        dynamic: false,
        doc: "The rack: a partition's replicas go to different racks",
    },
    Property {
        name: "log.dir",
        kind: Kind::String,
        default: |_| s("./data"),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "The data directory (log.dirs wins when both are set)",
    },
    Property {
        name: "log.dirs",
        kind: Kind::List,
        default: |_| s("./data"),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "The data directory (one per node)",
    },
    Property {
        name: "metrics.listener",
        kind: Kind::String,
        default: |_| s(""),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "host:port of the Prometheus endpoint (GET /metrics, Kafka's JMX exporter names); empty: off",
    },
    Property {
        name: "max.connections",
        kind: Kind::Int,
        default: |c| s(c.connections.total),
        apply: Apply::Node(|c, v| {
            c.connections.total = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Client connections open at once; at the limit the listener waits for one to close",
    },
    Property {
        name: "max.connections.per.ip",
        kind: Kind::Int,
        default: |c| s(c.connections.per_ip),
        apply: Apply::Node(|c, v| {
            c.connections.per_ip = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Client connections from one address; past it a new one is closed at once",
    },
    Property {
        name: "max.connections.per.ip.overrides",
        kind: Kind::String,
        default: |c| c.connections.per_ip_overrides.clone(),
        apply: Apply::Node(|c, v| {
            crate::config::parse_overrides(v)?;
            c.connections.per_ip_overrides = v.to_string();
            Ok(())
        }),
        dynamic: true,
        doc: "host:count,... exceptions to max.connections.per.ip",
    },
    Property {
        name: "queued.max.requests",
        kind: Kind::Int,
        default: |_| s(500),
        apply: Apply::Runtime,
        dynamic: false,
        doc: "Requests waiting for the broker's state machine before connections stop being read",
    },
    // Timings of the cluster.
    Property {
        name: "broker.heartbeat.interval.ms",
        kind: Kind::Int,
        default: |c| s(c.broker_heartbeat_interval_ms),
        apply: Apply::Node(|c, v| {
            c.broker_heartbeat_interval_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How often a broker heartbeats to the controller",
    },
    Property {
        name: "broker.session.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.broker_session_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.broker_session_timeout_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A broker not heard from for this long is fenced",
    },
    Property {
        name: "controller.quorum.election.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.quorum_election_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.quorum_election_timeout_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A voter that hears no leader for this long (plus jitter) starts an election",
    },
    Property {
        name: "controller.quorum.fetch.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.quorum_fetch_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.quorum_fetch_timeout_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A follower that cannot fetch from the leader for this long looks for another",
    },
    Property {
        name: "metadata.log.max.record.bytes.between.snapshots",
        kind: Kind::Long,
        default: |c| s(c.metadata_snapshot_bytes),
        apply: Apply::Node(|c, v| {
            c.metadata_snapshot_bytes = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A snapshot of the metadata is written after this many bytes of metadata records",
    },
    Property {
        name: "metadata.log.max.snapshot.interval.ms",
        kind: Kind::Long,
        default: |c| s(c.metadata_snapshot_interval_ms),
        apply: Apply::Node(|c, v| {
            c.metadata_snapshot_interval_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A snapshot of the metadata is written this long after the last one if records came since (0: never by time)",
    },
    // Topics and the log.
    Property {
        name: "num.partitions",
        kind: Kind::Int,
        default: |c| s(c.num_partitions),
        apply: Apply::Node(|c, v| {
            c.num_partitions = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Partitions of a topic created without a count",
    },
    Property {
        name: "auto.create.topics.enable",
        kind: Kind::Boolean,
        default: |c| s(c.auto_create_topics_enable),
        apply: Apply::Node(|c, v| {
            c.auto_create_topics_enable = boolean(v)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Create a topic when a producer or Metadata request names an unknown one",
    },
    Property {
        name: "delete.topic.enable",
        kind: Kind::Boolean,
        default: |_| s(true),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; topics can always be deleted",
    },
    Property {
        name: "message.max.bytes",
        kind: Kind::Int,
        default: |c| s(c.message_max_bytes),
        apply: Apply::Node(|c, v| {
            c.message_max_bytes = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Largest record batch accepted (default of the topic config max.message.bytes)",
    },
    Property {
        name: "socket.request.max.bytes",
        kind: Kind::Int,
        default: |c| s(c.socket_request_max_bytes),
        apply: Apply::Node(|c, v| {
            c.socket_request_max_bytes = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Largest request frame; a larger one closes the connection",
    },
    Property {
        name: "log.segment.bytes",
        kind: Kind::Int,
        default: |c| s(c.log.segment_bytes),
        apply: Apply::Node(|c, v| {
            c.log.segment_bytes = at_least(v, 14)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Segment file size at which a partition's log rolls (topic config segment.bytes)",
    },
    Property {
        name: "log.roll.hours",
        kind: Kind::Int,
        default: |c| s(c.log.segment_ms / 3_600_000),
        apply: Apply::Node(|c, v| {
            c.log.segment_ms = at_least::<i64>(v, 1)?.saturating_mul(3_600_000);
            Ok(())
        }),
        dynamic: false,
        doc: "Age at which the active segment rolls, in hours (log.roll.ms wins)",
    },
    Property {
        name: "log.roll.ms",
        kind: Kind::Long,
        default: |c| s(c.log.segment_ms),
        apply: Apply::Node(|c, v| {
            c.log.segment_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Age at which the active segment rolls (topic config segment.ms)",
    },
    Property {
        name: "log.retention.hours",
        kind: Kind::Int,
        default: |c| s(c.log.retention_ms / 3_600_000),
        apply: Apply::Node(|c, v| {
            c.log.retention_ms = num::<i64>(v)?.saturating_mul(3_600_000);
            Ok(())
        }),
        dynamic: false,
        doc: "Age past which old segments are deleted, in hours (the .minutes and .ms forms win)",
    },
    Property {
        name: "log.retention.minutes",
        kind: Kind::Int,
        default: |c| s(c.log.retention_ms / 60_000),
        apply: Apply::Node(|c, v| {
            c.log.retention_ms = num::<i64>(v)?.saturating_mul(60_000);
            Ok(())
        }),
        dynamic: false,
        doc: "Age past which old segments are deleted, in minutes (log.retention.ms wins)",
    },
    Property {
        name: "log.retention.ms",
        kind: Kind::Long,
        default: |c| s(c.log.retention_ms),
        apply: Apply::Node(|c, v| {
            c.log.retention_ms = num(v)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Age past which old segments are deleted; -1: kept forever (topic config retention.ms)",
    },
    Property {
        name: "log.retention.bytes",
        kind: Kind::Long,
        default: |c| s(c.log.retention_bytes),
        apply: Apply::Node(|c, v| {
            c.log.retention_bytes = num(v)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Partition size past which old segments are deleted; -1: no limit",
    },
    Property {
        name: "log.retention.check.interval.ms",
        kind: Kind::Long,
        default: |c| s(c.log.retention_check_interval_ms),
        apply: Apply::Node(|c, v| {
            c.log.retention_check_interval_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How often retention looks for segments to delete",
    },
    Property {
        name: "log.cleaner.enable",
        kind: Kind::Boolean,
        default: |c| s(c.log.cleaner_enable),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_enable = boolean(v)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Run the log cleaner, which compacts topics whose cleanup.policy holds compact",
    },
    Property {
        name: "log.cleaner.backoff.ms",
        kind: Kind::Long,
        default: |c| s(c.log.cleaner_backoff_ms),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_backoff_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: true,
        doc: "How often the cleaner looks for a log to compact when it has none",
    },
    Property {
        name: "log.cleaner.dedupe.buffer.size",
        kind: Kind::Long,
        default: |c| s(c.log.cleaner_dedupe_buffer_bytes),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_dedupe_buffer_bytes = at_least(v, 1024)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Memory for the cleaner's map of keys to their latest offsets (24 bytes a key)",
    },
    Property {
        name: "log.cleaner.min.cleanable.ratio",
        kind: Kind::Double,
        default: |c| s(c.log.cleaner_min_cleanable_ratio),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_min_cleanable_ratio = ratio(v)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Share of a log not yet cleaned past which it is cleaned (topic config min.cleanable.dirty.ratio)",
    },
    Property {
        name: "log.cleaner.delete.retention.ms",
        kind: Kind::Long,
        default: |c| s(c.log.cleaner_delete_retention_ms),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_delete_retention_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: true,
        doc: "How long a tombstone outlives its segment's last append (topic config delete.retention.ms)",
    },
    Property {
        name: "log.cleaner.min.compaction.lag.ms",
        kind: Kind::Long,
        default: |c| s(c.log.cleaner_min_compaction_lag_ms),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_min_compaction_lag_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Records younger than this are never compacted (topic config min.compaction.lag.ms)",
    },
    Property {
        name: "log.cleaner.max.compaction.lag.ms",
        kind: Kind::Long,
        default: |c| s(c.log.cleaner_max_compaction_lag_ms),
        apply: Apply::Node(|c, v| {
            c.log.cleaner_max_compaction_lag_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: true,
        doc: "A log with records older than this is cleaned whatever its dirty ratio (topic config max.compaction.lag.ms)",
    },
    Property {
        name: "log.index.interval.bytes",
        kind: Kind::Int,
        default: |c| s(c.log.index_interval_bytes),
        apply: Apply::Node(|c, v| {
            c.log.index_interval_bytes = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: true,
        doc: "Bytes between entries of a segment's offset index",
    },
    Property {
        name: "log.flush.interval.messages",
        kind: Kind::Long,
        default: |_| s(i64::MAX),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; Sluice syncs a batch before acknowledging it",
    },
    Property {
        name: "log.flush.interval.ms",
        kind: Kind::Long,
        default: |_| s(""),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; Sluice syncs a batch before acknowledging it",
    },
    Property {
        name: "num.network.threads",
        kind: Kind::Int,
        default: |_| s(3),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; connections run on the runtime's worker threads",
    },
    Property {
        name: "num.io.threads",
        kind: Kind::Int,
        default: |_| s(8),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; the broker's state machine runs on one thread, disk work on others",
    },
    Property {
        name: "num.recovery.threads.per.data.dir",
        kind: Kind::Int,
        default: |_| s(2),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; recovery reads the data directory on the disk threads",
    },
    Property {
        name: "socket.send.buffer.bytes",
        kind: Kind::Int,
        default: |_| s(102_400),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; sockets keep the kernel's buffer sizes",
    },
    Property {
        name: "socket.receive.buffer.bytes",
        kind: Kind::Int,
        default: |_| s(102_400),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; sockets keep the kernel's buffer sizes",
    },
    // Replication.
    Property {
        name: "default.replication.factor",
        kind: Kind::Int,
        default: |c| s(c.replication.default_replication_factor),
        apply: Apply::Node(|c, v| {
            c.replication.default_replication_factor = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Replicas of a topic created without a count",
    },
    Property {
        name: "min.insync.replicas",
        kind: Kind::Int,
        default: |c| s(c.replication.min_insync_replicas),
        apply: Apply::Node(|c, v| {
            c.replication.min_insync_replicas = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: true,
        doc: "In-sync replicas an acks=all produce needs (default of the topic config)",
    },
    Property {
        name: "replica.lag.time.max.ms",
        kind: Kind::Long,
        default: |c| s(c.replication.replica_lag_time_max_ms),
        apply: Apply::Node(|c, v| {
            c.replication.replica_lag_time_max_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A follower not caught up for this long leaves the ISR",
    },
    Property {
        name: "replica.fetch.wait.max.ms",
        kind: Kind::Int,
        default: |c| s(c.replication.replica_fetch_wait_max_ms),
        apply: Apply::Node(|c, v| {
            c.replication.replica_fetch_wait_max_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How long a leader holds a follower's fetch that finds nothing new",
    },
    Property {
        name: "replica.fetch.max.bytes",
        kind: Kind::Int,
        default: |c| s(c.replication.replica_fetch_max_bytes),
        apply: Apply::Node(|c, v| {
            c.replication.replica_fetch_max_bytes = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Bytes a follower asks for per partition per fetch",
    },
    Property {
        name: "replica.fetch.response.max.bytes",
        kind: Kind::Int,
        default: |c| s(c.replication.replica_fetch_response_max_bytes),
        apply: Apply::Node(|c, v| {
            c.replication.replica_fetch_response_max_bytes = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Bytes a follower's fetch returns at most",
    },
    Property {
        name: "unclean.leader.election.enable",
        kind: Kind::Boolean,
        default: |_| s(false),
        apply: Apply::Node(|_, v| {
            if boolean(v)? {
                return Err("Sluice elects leaders only from the ISR (true is refused)".into());
            }
            Ok(())
        }),
        dynamic: false,
        doc: "Must stay false: a leader outside the ISR would lose acknowledged records",
    },
    Property {
        name: "auto.leader.rebalance.enable",
        kind: Kind::Boolean,
        default: |c| s(c.replication.auto_leader_rebalance),
        apply: Apply::Node(|c, v| {
            c.replication.auto_leader_rebalance = boolean(v)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Move leadership back to each partition's preferred replica once it is in sync",
    },
    Property {
        name: "leader.imbalance.check.interval.seconds",
        kind: Kind::Long,
        default: |c| s(c.replication.leader_imbalance_check_interval_ms / 1000),
        apply: Apply::Node(|c, v| {
            c.replication.leader_imbalance_check_interval_ms = at_least::<u64>(v, 1)?.saturating_mul(1000);
            Ok(())
        }),
        dynamic: false,
        doc: "How often the controller looks for partitions led by a replica not preferred",
    },
    Property {
        name: "offsets.topic.replication.factor",
        kind: Kind::Int,
        default: |c| s(c.replication.offsets_topic_replication_factor),
        apply: Apply::Node(|c, v| {
            c.replication.offsets_topic_replication_factor = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Replicas of __consumer_offsets (capped at the brokers the cluster has)",
    },
    Property {
        name: "offsets.topic.segment.bytes",
        kind: Kind::Int,
        default: |c| s(c.log.offsets_segment_bytes),
        apply: Apply::Node(|c, v| {
            c.log.offsets_segment_bytes = at_least(v, 14)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Segment size of __consumer_offsets (smaller: compacted sooner, loaded faster)",
    },
    Property {
        name: "transaction.state.log.segment.bytes",
        kind: Kind::Int,
        default: |c| s(c.log.txn_state_segment_bytes),
        apply: Apply::Node(|c, v| {
            c.log.txn_state_segment_bytes = at_least(v, 14)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Segment size of __transaction_state",
    },
    Property {
        name: "offsets.topic.num.partitions",
        kind: Kind::Int,
        default: |_| s(crate::node::OFFSETS_PARTITIONS),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; __consumer_offsets always has 50 partitions",
    },
    Property {
        name: "transaction.state.log.replication.factor",
        kind: Kind::Int,
        default: |c| s(c.replication.transaction_state_log_replication_factor),
        apply: Apply::Node(|c, v| {
            c.replication.transaction_state_log_replication_factor = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Replicas of __transaction_state (capped at the brokers the cluster has)",
    },
    Property {
        name: "transaction.state.log.min.isr",
        kind: Kind::Int,
        default: |c| s(c.replication.transaction_state_log_min_isr),
        apply: Apply::Node(|c, v| {
            c.replication.transaction_state_log_min_isr = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "min.insync.replicas of __transaction_state",
    },
    Property {
        name: "transaction.state.log.num.partitions",
        kind: Kind::Int,
        default: |_| s(crate::node::TXN_PARTITIONS),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; __transaction_state always has 50 partitions",
    },
    Property {
        name: "share.coordinator.state.topic.replication.factor",
        kind: Kind::Int,
        default: |_| s(3),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; share groups (KIP-932) are not supported",
    },
    Property {
        name: "share.coordinator.state.topic.min.isr",
        kind: Kind::Int,
        default: |_| s(2),
        apply: Apply::Inert,
        dynamic: false,
        doc: "Accepted; share groups (KIP-932) are not supported",
    },
    // Consumer groups.
    Property {
        name: "group.initial.rebalance.delay.ms",
        kind: Kind::Int,
        default: |c| s(c.group.initial_rebalance_delay_ms),
        apply: Apply::Node(|c, v| {
            c.group.initial_rebalance_delay_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How long a new classic group waits for more members before its first rebalance",
    },
    Property {
        name: "group.min.session.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.group.min_session_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.group.min_session_timeout_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Shortest session timeout a classic group member may ask for",
    },
    Property {
        name: "group.max.session.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.group.max_session_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.group.max_session_timeout_ms = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Longest session timeout a classic group member may ask for",
    },
    Property {
        name: "group.max.size",
        kind: Kind::Int,
        default: |c| s(c.group.max_members),
        apply: Apply::Node(|c, v| {
            c.group.max_members = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Most members a group may have",
    },
    Property {
        name: "group.consumer.session.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.group.consumer_session_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.group.consumer_session_timeout_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Session timeout of members of KIP-848 (consumer protocol) groups",
    },
    Property {
        name: "group.consumer.heartbeat.interval.ms",
        kind: Kind::Int,
        default: |c| s(c.group.consumer_heartbeat_interval_ms),
        apply: Apply::Node(|c, v| {
            c.group.consumer_heartbeat_interval_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Heartbeat interval given to members of KIP-848 groups",
    },
    Property {
        name: "offsets.retention.minutes",
        kind: Kind::Int,
        default: |c| s(c.group.offsets_retention_ms / 60_000),
        apply: Apply::Node(|c, v| {
            c.group.offsets_retention_ms = at_least::<u64>(v, 1)?.saturating_mul(60_000);
            Ok(())
        }),
        dynamic: false,
        doc: "How long an empty group's committed offsets are kept",
    },
    Property {
        name: "offsets.retention.check.interval.ms",
        kind: Kind::Long,
        default: |c| s(c.group.offsets_retention_check_interval_ms),
        apply: Apply::Node(|c, v| {
            c.group.offsets_retention_check_interval_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How often expired offsets are looked for",
    },
    Property {
        name: "offset.metadata.max.bytes",
        kind: Kind::Int,
        default: |c| s(c.group.offset_metadata_max_bytes),
        apply: Apply::Node(|c, v| {
            c.group.offset_metadata_max_bytes = at_least(v, 0)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Longest metadata string an offset commit may carry",
    },
    // Producers and transactions.
    Property {
        name: "producer.id.expiration.ms",
        kind: Kind::Int,
        default: |c| s(c.producer_id_expiration_ms),
        apply: Apply::Node(|c, v| {
            c.producer_id_expiration_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: true,
        doc: "An idempotent producer idle this long on a partition is forgotten there",
    },
    Property {
        name: "producer.id.expiration.check.interval.ms",
        kind: Kind::Int,
        default: |c| s(c.producer_id_expiration_check_interval_ms),
        apply: Apply::Node(|c, v| {
            c.producer_id_expiration_check_interval_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How often idle producers are looked for",
    },
    Property {
        name: "transaction.max.timeout.ms",
        kind: Kind::Int,
        default: |c| s(c.txn_max_timeout_ms),
        apply: Apply::Node(|c, v| {
            c.txn_max_timeout_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "Longest transaction timeout a producer may ask for",
    },
    Property {
        name: "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        kind: Kind::Int,
        default: |c| s(c.txn_abort_check_interval_ms),
        apply: Apply::Node(|c, v| {
            c.txn_abort_check_interval_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "How often open transactions are checked against their timeouts",
    },
    Property {
        name: "transactional.id.expiration.ms",
        kind: Kind::Int,
        default: |c| s(c.txn_id_expiration_ms),
        apply: Apply::Node(|c, v| {
            c.txn_id_expiration_ms = at_least(v, 1)?;
            Ok(())
        }),
        dynamic: false,
        doc: "A transactional id idle this long is forgotten",
    },
];

/// The property of that name.
pub fn find(name: &str) -> Option<&'static Property> {
    BROKER_PROPERTIES.iter().find(|p| p.name == name)
}

/// The known property nearest to a misspelt name, when one is near enough to be meant.
pub fn closest(name: &str) -> Option<&'static str> {
    BROKER_PROPERTIES
        .iter()
        .map(|p| (strsim::damerau_levenshtein(name, p.name), p.name))
        .filter(|&(d, p)| d <= 3.max(p.len() / 6))
        .min()
        .map(|(_, p)| p)
}

/// Applies the properties the core acts on, in the table's order, after checking every
/// value against its kind. Returns one warning per property the table does not know (with
/// the name it probably meant); a malformed value is an error naming the property.
pub fn apply(props: &BTreeMap<String, String>, node: &mut NodeConfig) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for name in props.keys().filter(|k| find(k).is_none()) {
        warnings.push(match closest(name) {
            Some(near) => format!("unknown property {name:?} ignored; did you mean {near:?}?"),
            None => format!("unknown property {name:?} ignored"),
        });
    }
    for p in BROKER_PROPERTIES {
        let Some(value) = props.get(p.name) else { continue };
        p.kind.check(value).map_err(|e| format!("{}: {e}", p.name))?;
        if let Apply::Node(set) = p.apply {
            set(node, value.trim()).map_err(|e| format!("{}: {e}", p.name))?;
        }
    }
    node.broker_properties =
        props.iter().filter(|(k, _)| find(k).is_some()).map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(warnings)
}

/// Applies dynamic configs (the metadata log's, on top of the static ones) in the table's
/// order. A value that does not apply is left out and named in the errors returned; the rest
/// still apply.
pub fn apply_dynamic(configs: &BTreeMap<String, String>, node: &mut NodeConfig) -> Vec<String> {
    let mut errors = Vec::new();
    for p in BROKER_PROPERTIES.iter().filter(|p| p.dynamic) {
        let (Some(value), Apply::Node(set)) = (configs.get(p.name), p.apply) else { continue };
        let mut next = node.clone();
        match p.kind.check(value).and_then(|()| set(&mut next, value.trim())) {
            Ok(()) => *node = next,
            Err(e) => errors.push(format!("{}: {e}", p.name)),
        }
    }
    errors
}

/// The `--help` text: every property with its type, default and meaning.
pub fn help_table() -> String {
    let defaults = NodeConfig::default();
    let mut out = String::new();
    for p in BROKER_PROPERTIES {
        let default = (p.default)(&defaults);
        let default = if default.is_empty() { "none".to_string() } else { default };
        let dynamic = if p.dynamic { ", dynamic" } else { "" };
        out.push_str(&format!("  {} ({}, default {default}{dynamic})\n      {}\n", p.name, p.kind.name(), p.doc));
    }
    out
}

/// The README's table of properties.
pub fn markdown_table() -> String {
    let defaults = NodeConfig::default();
    let mut out = String::from("| Property | Type | Default | Meaning |\n|---|---|---|---|\n");
    for p in BROKER_PROPERTIES {
        let default = (p.default)(&defaults);
        let default = if default.is_empty() { String::new() } else { format!("`{default}`") };
        let note = match p.apply {
            Apply::Inert => "",
            _ if p.dynamic => " (dynamic)",
            _ => "",
        };
        out.push_str(&format!("| `{}` | {} | {} | {}{} |\n", p.name, p.kind.name(), default, p.doc, note));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_are_unique_and_defaults_parse_as_their_kind() {
        let defaults = NodeConfig::default();
        let mut seen = std::collections::BTreeSet::new();
        for p in BROKER_PROPERTIES {
            assert!(seen.insert(p.name), "{} twice", p.name);
            let d = (p.default)(&defaults);
            if !d.is_empty() {
                p.kind.check(&d).unwrap_or_else(|e| panic!("{}: default {e}", p.name));
            }
        }
    }

    #[test]
    fn the_most_precise_synonym_wins() {
        let mut c = NodeConfig::default();
        apply(&props(&[("log.retention.hours", "2"), ("log.retention.ms", "5000")]), &mut c).unwrap();
        assert_eq!(c.log.retention_ms, 5000);
        let mut c = NodeConfig::default();
        apply(&props(&[("log.retention.hours", "2")]), &mut c).unwrap();
        assert_eq!(c.log.retention_ms, 7_200_000);
        let mut c = NodeConfig::default();
        apply(&props(&[("broker.id", "4"), ("node.id", "5")]), &mut c).unwrap();
        assert_eq!(c.node_id, BrokerId(5));
    }

    #[test]
    fn malformed_values_name_their_property() {
        let mut c = NodeConfig::default();
        let e = apply(&props(&[("num.partitions", "many")]), &mut c).unwrap_err();
        assert!(e.starts_with("num.partitions:"), "{e}");
        let e = apply(&props(&[("num.partitions", "0")]), &mut c).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = apply(&props(&[("num.io.threads", "x")]), &mut c).unwrap_err();
        assert!(e.starts_with("num.io.threads:"), "an inert property's value is still checked: {e}");
        let e = apply(&props(&[("auto.create.topics.enable", "yes")]), &mut c).unwrap_err();
        assert!(e.contains("boolean"), "{e}");
        let e = apply(&props(&[("message.max.bytes", "3000000000")]), &mut c).unwrap_err();
        assert!(e.contains("int"), "an int is 32 bits, as in Kafka: {e}");
        assert!(apply(&props(&[("unclean.leader.election.enable", "true")]), &mut c).is_err());
    }

    #[test]
    fn misspelt_names_are_warned_about_with_the_nearest() {
        let mut c = NodeConfig::default();
        let w = apply(&props(&[("log.retention.hour", "1"), ("num.partition", "3"), ("zzz", "1")]), &mut c).unwrap();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w.iter().any(|m| m.contains("\"log.retention.hour\"") && m.contains("\"log.retention.hours\"")),
            "{w:?}"
        );
        assert!(w.iter().any(|m| m.contains("\"num.partition\"") && m.contains("\"num.partitions\"")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("\"zzz\"") && !m.contains("mean")), "{w:?}");
        assert_eq!(c.num_partitions, 1, "an unknown name sets nothing");
        assert!(!c.broker_properties.contains_key("zzz"));
    }
}

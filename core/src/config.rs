//! Node configuration and topic configuration, with Kafka's defaults.

use std::collections::BTreeMap;

use crate::limits;
use crate::types::BrokerId;

/// Everything a node needs to know at start-up. The runtime builds it from Kafka-style
/// properties; core never reads a file.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: BrokerId,
    pub cluster_id: String,
    /// Host and port clients are told to connect to (`advertised.listeners`).
    pub advertised_host: String,
    pub advertised_port: i32,
    pub num_partitions: i32,
    pub auto_create_topics_enable: bool,
    pub message_max_bytes: usize,
    pub socket_request_max_bytes: usize,
    /// Client connection limits, which the runtime enforces and follows as they change.
    pub connections: ConnectionLimits,
    /// Defaults for topic-level configs (`log.segment.bytes` and friends).
    pub log: LogDefaults,
    /// The broker's own properties, reported by DescribeConfigs on the broker resource.
    pub broker_properties: BTreeMap<String, String>,
    /// Consumer group settings (`group.initial.rebalance.delay.ms`, session timeout bounds).
    pub group: crate::group::GroupConfig,
    /// An idempotent producer's state on a partition is forgotten after this long without a
    /// batch (`producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// How often idle producers are looked for (`producer.id.expiration.check.interval.ms`).
    pub producer_id_expiration_check_interval_ms: u64,
    /// How often open transactions are checked against their timeouts
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    pub txn_abort_check_interval_ms: u64,
    /// The longest transaction timeout a producer may ask for (`transaction.max.timeout.ms`).
    pub txn_max_timeout_ms: i32,
    /// A transactional id idle this long is forgotten (`transactional.id.expiration.ms`).
    pub txn_id_expiration_ms: i64,
    /// The cluster: the metadata quorum's voters (`controller.quorum.voters`), each node's id
    /// and its controller endpoint. Empty: this node is a cluster of one, its sole voter.
    pub voters: BTreeMap<i32, (String, u16)>,
    /// `broker.rack`, for placing a partition's replicas in different racks.
    pub rack: Option<String>,
    /// How often a broker tells the controller it is alive (`broker.heartbeat.interval.ms`).
    pub broker_heartbeat_interval_ms: u64,
    /// A broker the controller has not heard from for this long is fenced
    /// (`broker.session.timeout.ms`).
    pub broker_session_timeout_ms: u64,
    /// `controller.quorum.election.timeout.ms`.
    pub quorum_election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`.
    pub quorum_fetch_timeout_ms: u64,
    /// `metadata.log.max.record.bytes.between.snapshots`: a snapshot of the metadata image is
    /// written once this many bytes of records have been applied since the last one...
    pub metadata_snapshot_bytes: u64,
    /// ...or, with any record applied since, once this long has passed
    /// (`metadata.log.max.snapshot.interval.ms`; 0: never by time).
    pub metadata_snapshot_interval_ms: u64,
    /// Partition replication: replica counts, the ISR and the followers' fetching.
    pub replication: ReplicationConfig,
    /// The data directory as the operator named it (reported by DescribeLogDirs; core never
    /// opens it: the runtime does).
    pub log_dir: String,
}

/// Kafka's replication settings, with its defaults.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Replicas of a topic created without a count (`default.replication.factor`).
    pub default_replication_factor: i16,
    /// The default of the topic config `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// A follower not caught up for this long leaves the ISR (`replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// How long a leader holds a follower's fetch that finds nothing new
    /// (`replica.fetch.wait.max.ms`).
    pub replica_fetch_wait_max_ms: u64,
    /// Bytes a follower asks for per partition per fetch (`replica.fetch.max.bytes`).
    pub replica_fetch_max_bytes: usize,
    /// Bytes a follower's fetch returns at most (`replica.fetch.response.max.bytes`).
    pub replica_fetch_response_max_bytes: usize,
    /// Leadership goes back to each partition's preferred replica once it is in sync again
    /// (`auto.leader.rebalance.enable`), checked every `leader.imbalance.check.interval.seconds`.
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval_ms: u64,
    /// Replicas of `__consumer_offsets` and of `__transaction_state`
    /// (`offsets.topic.replication.factor`, `transaction.state.log.replication.factor`),
    /// capped at the brokers the cluster has.
    pub offsets_topic_replication_factor: i16,
    pub transaction_state_log_replication_factor: i16,
    /// `min.insync.replicas` of `__transaction_state` (`transaction.state.log.min.isr`).
    pub transaction_state_log_min_isr: i32,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            default_replication_factor: 1,
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1024 * 1024,
            replica_fetch_response_max_bytes: 10 * 1024 * 1024,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            offsets_topic_replication_factor: 3,
            transaction_state_log_replication_factor: 3,
            transaction_state_log_min_isr: 2,
        }
    }
}

impl NodeConfig {
    /// The voters' ids: the configured ones, or this node alone.
    pub fn voter_ids(&self) -> Vec<i32> {
        if self.voters.is_empty() {
            vec![self.node_id.0]
        } else {
            self.voters.keys().copied().collect()
        }
    }

    /// More than one node: brokers register, heartbeat and share partitions.
    pub fn is_cluster(&self) -> bool {
        self.voter_ids() != [self.node_id.0]
    }
}

#[derive(Clone, Debug)]
pub struct LogDefaults {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub index_interval_bytes: u32,
    pub retention_check_interval_ms: u64,
    /// The log cleaner (compaction) runs at all (`log.cleaner.enable`).
    pub cleaner_enable: bool,
    /// How often the cleaner looks for a log to clean (`log.cleaner.backoff.ms`).
    pub cleaner_backoff_ms: u64,
    /// Memory for the cleaner's key map (`log.cleaner.dedupe.buffer.size`).
    pub cleaner_dedupe_buffer_bytes: u64,
    pub cleaner_min_cleanable_ratio: f64,
    pub cleaner_delete_retention_ms: i64,
    pub cleaner_min_compaction_lag_ms: i64,
    pub cleaner_max_compaction_lag_ms: i64,
    /// Segment size of `__consumer_offsets` (`offsets.topic.segment.bytes`).
    pub offsets_segment_bytes: u64,
    /// Segment size of `__transaction_state` (`transaction.state.log.segment.bytes`).
    pub txn_state_segment_bytes: u64,
}

impl Default for LogDefaults {
    fn default() -> Self {
        LogDefaults {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            retention_check_interval_ms: 300_000,
            cleaner_enable: true,
            cleaner_backoff_ms: 15_000,
            cleaner_dedupe_buffer_bytes: 128 * 1024 * 1024,
            cleaner_min_cleanable_ratio: 0.5,
            cleaner_delete_retention_ms: 86_400_000,
            cleaner_min_compaction_lag_ms: 0,
            cleaner_max_compaction_lag_ms: i64::MAX,
            offsets_segment_bytes: 100 * 1024 * 1024,
            txn_state_segment_bytes: 100 * 1024 * 1024,
        }
    }
}

/// `max.connections`, `max.connections.per.ip` and `max.connections.per.ip.overrides`
/// (`host:count,...`, checked: IP addresses or `localhost`). Dynamic, as in Kafka: a runtime
/// reads them from [`crate::Node::config`] after each step, and a change applies to new
/// connections (those open stay open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_ip: usize,
    pub per_ip_overrides: String,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { total: i32::MAX as usize, per_ip: i32::MAX as usize, per_ip_overrides: String::new() }
    }
}

impl ConnectionLimits {
    /// The overrides, by host as written (an IP address, or `localhost`).
    pub fn overrides(&self) -> Result<Vec<(String, usize)>, String> {
        parse_overrides(&self.per_ip_overrides)
    }
}

/// `host:count,...`: each host an IP address (IPv6 in brackets or not) or `localhost`.
pub fn parse_overrides(value: &str) -> Result<Vec<(String, usize)>, String> {
    let mut out = Vec::new();
    for one in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || format!("{one:?} is not host:count (an IP address or localhost, and a count)");
        let (host, n) = one.rsplit_once(':').ok_or_else(bad)?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        let host = host.trim().trim_matches(|c| c == '[' || c == ']');
        if host != "localhost" && host.parse::<core::net::IpAddr>().is_err() {
            return Err(bad());
        }
        out.push((host.to_string(), n));
    }
    Ok(out)
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: BrokerId(1),
            cluster_id: "sluice-cluster-0000000".to_string(),
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: 9092,
            num_partitions: 1,
            auto_create_topics_enable: true,
            message_max_bytes: limits::MESSAGE_BYTES_MAX_DEFAULT,
            socket_request_max_bytes: limits::FRAME_BYTES_MAX_DEFAULT,
            connections: ConnectionLimits::default(),
            log: LogDefaults::default(),
            broker_properties: BTreeMap::new(),
            group: crate::group::GroupConfig::default(),
            producer_id_expiration_ms: 86_400_000,
            producer_id_expiration_check_interval_ms: 600_000,
            txn_abort_check_interval_ms: 10_000,
            txn_max_timeout_ms: 900_000,
            txn_id_expiration_ms: 604_800_000,
            voters: BTreeMap::new(),
            rack: None,
            broker_heartbeat_interval_ms: 2_000,
            broker_session_timeout_ms: 9_000,
            quorum_election_timeout_ms: 1_000,
            quorum_fetch_timeout_ms: 2_000,
            metadata_snapshot_bytes: 20 * 1024 * 1024,
            metadata_snapshot_interval_ms: 3_600_000,
            replication: ReplicationConfig::default(),
            log_dir: "./data".to_string(),
        }
    }
}

/// One topic config key: its Kafka name, how to find its default, and its type for
/// DescribeConfigs (`config_type`: 1 boolean, 2 string, 3 int, 5 long, 6 double, 7 list).
pub struct TopicConfigKey {
    pub name: &'static str,
    pub config_type: i8,
    pub doc: &'static str,
}

/// Topic configs a client can set and describe. Values that Sluice does not act on yet are
/// still reported with Kafka's defaults, so tools that read them see real values.
pub const TOPIC_CONFIG_KEYS: &[TopicConfigKey] = &[
    TopicConfigKey {
        name: "cleanup.policy",
        config_type: 7,
        doc: "delete (old segments go by retention.ms and retention.bytes), compact (the cleaner keeps each key's latest record), or both",
    },
    TopicConfigKey {
        name: "compression.type",
        config_type: 2,
        doc: "Compression the broker applies; producer keeps the producer's batches as sent",
    },
    TopicConfigKey { name: "delete.retention.ms", config_type: 5, doc: "Tombstone retention for compacted topics" },
    TopicConfigKey {
        name: "file.delete.delay.ms",
        config_type: 5,
        doc: "Delay before deleting a file from the filesystem",
    },
    TopicConfigKey {
        name: "flush.messages",
        config_type: 5,
        doc: "Sluice syncs before every acknowledgement; kept for compatibility",
    },
    TopicConfigKey {
        name: "flush.ms",
        config_type: 5,
        doc: "Sluice syncs before every acknowledgement; kept for compatibility",
    },
    TopicConfigKey {
        name: "index.interval.bytes",
        config_type: 3,
        doc: "Bytes between entries of the on-disk offset index",
    },
    TopicConfigKey { name: "max.compaction.lag.ms", config_type: 5, doc: "Compaction lag bound" },
    TopicConfigKey { name: "max.message.bytes", config_type: 3, doc: "Largest record batch accepted" },
    TopicConfigKey { name: "message.timestamp.type", config_type: 2, doc: "CreateTime or LogAppendTime" },
    TopicConfigKey { name: "min.cleanable.dirty.ratio", config_type: 6, doc: "Compaction trigger ratio" },
    TopicConfigKey { name: "min.compaction.lag.ms", config_type: 5, doc: "Compaction lag floor" },
    TopicConfigKey {
        name: "min.insync.replicas",
        config_type: 3,
        doc: "Replicas that must acknowledge an acks=all produce",
    },
    TopicConfigKey { name: "preallocate", config_type: 1, doc: "Preallocate segment files" },
    TopicConfigKey {
        name: "retention.bytes",
        config_type: 5,
        doc: "Partition size past which old segments are deleted (-1: no limit)",
    },
    TopicConfigKey {
        name: "retention.ms",
        config_type: 5,
        doc: "Age past which old segments are deleted (-1: no limit)",
    },
    TopicConfigKey { name: "segment.bytes", config_type: 3, doc: "Segment file size at which the log rolls" },
    TopicConfigKey { name: "segment.index.bytes", config_type: 3, doc: "Index file size bound" },
    TopicConfigKey { name: "segment.jitter.ms", config_type: 5, doc: "Jitter on segment.ms" },
    TopicConfigKey { name: "segment.ms", config_type: 5, doc: "Age at which the active segment rolls" },
    TopicConfigKey {
        name: "unclean.leader.election.enable",
        config_type: 1,
        doc: "Allow leaders outside the ISR (never done by Sluice)",
    },
];

impl NodeConfig {
    /// The default value of a topic config on this node, or None for an unknown key.
    pub fn topic_config_default(&self, name: &str) -> Option<String> {
        let v = match name {
            "cleanup.policy" => "delete".to_string(),
            "compression.type" => "producer".to_string(),
            "delete.retention.ms" => self.log.cleaner_delete_retention_ms.to_string(),
            "file.delete.delay.ms" => "60000".to_string(),
            "flush.messages" => "1".to_string(),
            "flush.ms" => "0".to_string(),
            "index.interval.bytes" => self.log.index_interval_bytes.to_string(),
            "max.compaction.lag.ms" => self.log.cleaner_max_compaction_lag_ms.to_string(),
            "max.message.bytes" => self.message_max_bytes.to_string(),
            "message.timestamp.type" => "CreateTime".to_string(),
            "min.cleanable.dirty.ratio" => self.log.cleaner_min_cleanable_ratio.to_string(),
            "min.compaction.lag.ms" => self.log.cleaner_min_compaction_lag_ms.to_string(),
            "min.insync.replicas" => self.replication.min_insync_replicas.to_string(),
            "preallocate" => "false".to_string(),
            "retention.bytes" => self.log.retention_bytes.to_string(),
            "retention.ms" => self.log.retention_ms.to_string(),
            "segment.bytes" => self.log.segment_bytes.to_string(),
            "segment.index.bytes" => "10485760".to_string(),
            "segment.jitter.ms" => "0".to_string(),
            "segment.ms" => self.log.segment_ms.to_string(),
            "unclean.leader.election.enable" => "false".to_string(),
            _ => return None,
        };
        Some(v)
    }
}

/// The broker properties a topic config takes its default from, least precise first (the
/// last one wins when several are set, as [`crate::properties`] applies them).
pub fn broker_synonyms(topic_key: &str) -> &'static [&'static str] {
    match topic_key {
        "segment.bytes" => &["log.segment.bytes"],
        "segment.ms" => &["log.roll.hours", "log.roll.ms"],
        "retention.ms" => &["log.retention.hours", "log.retention.minutes", "log.retention.ms"],
        "retention.bytes" => &["log.retention.bytes"],
        "max.message.bytes" => &["message.max.bytes"],
        "index.interval.bytes" => &["log.index.interval.bytes"],
        "min.insync.replicas" => &["min.insync.replicas"],
        "unclean.leader.election.enable" => &["unclean.leader.election.enable"],
        "delete.retention.ms" => &["log.cleaner.delete.retention.ms"],
        "min.cleanable.dirty.ratio" => &["log.cleaner.min.cleanable.ratio"],
        "min.compaction.lag.ms" => &["log.cleaner.min.compaction.lag.ms"],
        "max.compaction.lag.ms" => &["log.cleaner.max.compaction.lag.ms"],
        _ => &[],
    }
}

/// Why a topic config value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownKey(String),
    BadValue { key: String, value: String },
}

/// The effective settings of one topic: explicit overrides over the node's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSettings {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub index_interval_bytes: u32,
    pub log_append_time: bool,
    /// In-sync replicas an acks=all produce needs (`min.insync.replicas`).
    pub min_insync_replicas: usize,
    /// `cleanup.policy` holds `delete`: retention deletes old segments.
    pub delete: bool,
    /// `cleanup.policy` holds `compact`: the cleaner keeps each key's latest record.
    pub compact: bool,
    pub delete_retention_ms: i64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub min_cleanable_ratio: f64,
}

impl TopicSettings {
    /// Checks every override and resolves the settings, or says which key is wrong.
    pub fn resolve(node: &NodeConfig, overrides: &BTreeMap<String, String>) -> Result<TopicSettings, ConfigError> {
        for (k, v) in overrides {
            if node.topic_config_default(k).is_none() {
                return Err(ConfigError::UnknownKey(k.clone()));
            }
            validate_value(k, v)?;
        }
        let get = |k: &str| overrides.get(k).cloned().or_else(|| node.topic_config_default(k)).unwrap_or_default();
        let int = |k: &str| get(k).parse::<i64>().unwrap_or(0);
        Ok(TopicSettings {
            segment_bytes: u64::try_from(int("segment.bytes")).unwrap_or(node.log.segment_bytes).max(14),
            segment_ms: int("segment.ms"),
            retention_ms: int("retention.ms"),
            retention_bytes: int("retention.bytes"),
            max_message_bytes: usize::try_from(int("max.message.bytes")).unwrap_or(node.message_max_bytes),
            index_interval_bytes: u32::try_from(int("index.interval.bytes")).unwrap_or(4096).max(1),
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            min_insync_replicas: usize::try_from(int("min.insync.replicas")).unwrap_or(1).max(1),
            delete: get("cleanup.policy").split(',').any(|p| p.trim() == "delete"),
            compact: get("cleanup.policy").split(',').any(|p| p.trim() == "compact"),
            delete_retention_ms: int("delete.retention.ms"),
            min_compaction_lag_ms: int("min.compaction.lag.ms"),
            max_compaction_lag_ms: int("max.compaction.lag.ms"),
            min_cleanable_ratio: get("min.cleanable.dirty.ratio").parse::<f64>().unwrap_or(0.5),
        })
    }
}

fn validate_value(key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadValue { key: key.to_string(), value: value.to_string() };
    let ty = TOPIC_CONFIG_KEYS.iter().find(|k| k.name == key).map(|k| k.config_type).unwrap_or(2);
    match ty {
        1 => value.parse::<bool>().map(|_| ()).map_err(|_| bad()),
        3 => value.parse::<i32>().map(|_| ()).map_err(|_| bad()),
        5 => value.parse::<i64>().map(|_| ()).map_err(|_| bad()),
        6 => value.parse::<f64>().map(|_| ()).map_err(|_| bad()),
        _ => match key {
            "message.timestamp.type" if value != "CreateTime" && value != "LogAppendTime" => Err(bad()),
            "cleanup.policy" if value.split(',').any(|p| p.trim() != "delete" && p.trim() != "compact") => Err(bad()),
            "compression.type" if !["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"].contains(&value) => {
                Err(bad())
            }
            "segment.bytes" if value.parse::<i32>().map_or(true, |v| v < 14) => Err(bad()),
            _ => Ok(()),
        },
    }
}

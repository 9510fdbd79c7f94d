//! Kafka-style configuration: a `server.properties` file, `--override key=value` on top, Kafka's
//! property names, safe single-node defaults when given nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_core::config::NodeConfig;
use sluice_core::BrokerId;

/// What the runtime needs besides the core's own configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub node: NodeConfig,
}

/// Reads `key=value` (or `key: value`) lines; `#` and `!` start comments.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .or_else(|| line.split_once(':'))
            .ok_or_else(|| format!("line {}: expected key=value, got {raw:?}", i + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// `PLAINTEXT://host:port[,...]` → the first listener's host and port.
fn parse_listener(value: &str) -> Result<(String, u16), String> {
    let first = value.split(',').next().unwrap_or("").trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("listener {value:?} has no port"))?;
    let port: u16 = port.parse().map_err(|_| format!("listener {value:?}: bad port"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_string(), port))
}

fn num<T: std::str::FromStr>(props: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, String> {
    props.get(key).map(|v| v.parse::<T>().map_err(|_| format!("{key}: {v:?} is not a valid number"))).transpose()
}

/// Builds the configuration from properties (file values with overrides applied).
pub fn build(props: &BTreeMap<String, String>) -> Result<ServerConfig, String> {
    let mut node = NodeConfig::default();
    let listeners = props.get("listeners").cloned().unwrap_or_else(|| "PLAINTEXT://127.0.0.1:9092".to_string());
    let (host, port) = parse_listener(&listeners)?;
    let listen: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("{}:{port}", if host == "localhost" { "127.0.0.1" } else { &host }).parse())
        .map_err(|_| format!("listeners: cannot listen on {host}:{port}"))?;
    let (adv_host, adv_port) = match props.get("advertised.listeners") {
        Some(v) => parse_listener(v)?,
        None => (if host == "0.0.0.0" { "127.0.0.1".to_string() } else { host.clone() }, port),
    };
    node.advertised_host = adv_host;
    node.advertised_port = i32::from(adv_port);
    let dirs = props.get("log.dirs").or_else(|| props.get("log.dir")).cloned().unwrap_or_else(|| "./data".to_string());
    let mut dirs = dirs.split(',').map(str::trim).filter(|d| !d.is_empty());
    let data_dir = PathBuf::from(dirs.next().ok_or("log.dirs is empty")?);
    if dirs.next().is_some() {
        return Err("log.dirs: Sluice uses one log directory per node for now".to_string());
    }
    if let Some(id) = num::<i32>(props, "node.id")?.or(num::<i32>(props, "broker.id")?) {
        node.node_id = BrokerId(id);
    }
    if let Some(n) = num::<i32>(props, "num.partitions")? {
        if n < 1 {
            return Err("num.partitions must be at least 1".into());
        }
        node.num_partitions = n;
    }
    if let Some(v) = props.get("auto.create.topics.enable") {
        node.auto_create_topics_enable = v.parse().map_err(|_| format!("auto.create.topics.enable: {v:?}"))?;
    }
    if let Some(v) = num::<usize>(props, "message.max.bytes")? {
        node.message_max_bytes = v;
    }
    if let Some(v) = num::<usize>(props, "socket.request.max.bytes")? {
        node.socket_request_max_bytes = v;
    }
    if let Some(v) = num::<u64>(props, "log.segment.bytes")? {
        if v < 14 {
            return Err("log.segment.bytes must be at least 14".into());
        }
        node.log.segment_bytes = v;
    }
    if let Some(v) = num::<i64>(props, "log.roll.ms")?.or(num::<i64>(props, "log.roll.hours")?.map(|h| h * 3_600_000)) {
        node.log.segment_ms = v;
    }
    let retention = num::<i64>(props, "log.retention.ms")?
        .or(num::<i64>(props, "log.retention.minutes")?.map(|m| m * 60_000))
        .or(num::<i64>(props, "log.retention.hours")?.map(|h| h * 3_600_000));
    if let Some(v) = retention {
        node.log.retention_ms = v;
    }
    if let Some(v) = num::<i64>(props, "log.retention.bytes")? {
        node.log.retention_bytes = v;
    }
    if let Some(v) = num::<u32>(props, "log.index.interval.bytes")? {
        node.log.index_interval_bytes = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "log.retention.check.interval.ms")? {
        node.log.retention_check_interval_ms = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "group.initial.rebalance.delay.ms")? {
        node.group.initial_rebalance_delay_ms = v;
    }
    if let Some(v) = num::<u64>(props, "group.min.session.timeout.ms")? {
        node.group.min_session_timeout_ms = v;
    }
    if let Some(v) = num::<u64>(props, "group.max.session.timeout.ms")? {
        node.group.max_session_timeout_ms = v;
    }
    if let Some(v) = num::<usize>(props, "group.max.size")? {
        node.group.max_members = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "offsets.retention.minutes")? {
        node.group.offsets_retention_ms = v.max(1).saturating_mul(60_000);
    }
    if let Some(v) = num::<usize>(props, "offset.metadata.max.bytes")? {
        node.group.offset_metadata_max_bytes = v;
    }
    if let Some(v) = num::<u64>(props, "group.consumer.session.timeout.ms")? {
        node.group.consumer_session_timeout_ms = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "group.consumer.heartbeat.interval.ms")? {
        node.group.consumer_heartbeat_interval_ms = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "offsets.retention.check.interval.ms")? {
        node.group.offsets_retention_check_interval_ms = v.max(1);
    }
    if let Some(v) = num::<i64>(props, "producer.id.expiration.ms")? {
        node.producer_id_expiration_ms = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "producer.id.expiration.check.interval.ms")? {
        node.producer_id_expiration_check_interval_ms = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "transaction.abort.timed.out.transaction.cleanup.interval.ms")? {
        node.txn_abort_check_interval_ms = v.max(1);
    }
    if let Some(v) = num::<i32>(props, "transaction.max.timeout.ms")? {
        node.txn_max_timeout_ms = v.max(1);
    }
    if let Some(v) = num::<i64>(props, "transactional.id.expiration.ms")? {
        node.txn_id_expiration_ms = v.max(1);
    }
    // Every property in force, as DescribeConfigs on the broker reports it.
    let mut effective = BTreeMap::new();
    effective.insert("node.id".to_string(), node.node_id.0.to_string());
    effective.insert("broker.id".to_string(), node.node_id.0.to_string());
    effective.insert("listeners".to_string(), listeners);
    effective.insert(
        "advertised.listeners".to_string(),
        format!("PLAINTEXT://{}:{}", node.advertised_host, node.advertised_port),
    );
    effective.insert("log.dirs".to_string(), data_dir.display().to_string());
    effective.insert("num.partitions".to_string(), node.num_partitions.to_string());
    effective.insert("default.replication.factor".to_string(), "1".to_string());
    effective.insert("min.insync.replicas".to_string(), "1".to_string());
    effective.insert("auto.create.topics.enable".to_string(), node.auto_create_topics_enable.to_string());
    effective.insert("message.max.bytes".to_string(), node.message_max_bytes.to_string());
    effective.insert("socket.request.max.bytes".to_string(), node.socket_request_max_bytes.to_string());
    effective.insert("log.segment.bytes".to_string(), node.log.segment_bytes.to_string());
    effective.insert("log.roll.ms".to_string(), node.log.segment_ms.to_string());
    effective.insert("log.retention.ms".to_string(), node.log.retention_ms.to_string());
    effective.insert("log.retention.bytes".to_string(), node.log.retention_bytes.to_string());
    effective.insert("log.index.interval.bytes".to_string(), node.log.index_interval_bytes.to_string());
    effective.insert("log.retention.check.interval.ms".to_string(), node.log.retention_check_interval_ms.to_string());
    effective.insert("delete.topic.enable".to_string(), "true".to_string());
    effective.insert("group.initial.rebalance.delay.ms".to_string(), node.group.initial_rebalance_delay_ms.to_string());
    effective.insert("group.min.session.timeout.ms".to_string(), node.group.min_session_timeout_ms.to_string());
    effective.insert("group.max.session.timeout.ms".to_string(), node.group.max_session_timeout_ms.to_string());
    effective.insert("group.max.size".to_string(), node.group.max_members.to_string());
    effective.insert("offsets.topic.num.partitions".to_string(), "50".to_string());
    effective
        .insert("group.consumer.session.timeout.ms".to_string(), node.group.consumer_session_timeout_ms.to_string());
    effective.insert(
        "group.consumer.heartbeat.interval.ms".to_string(),
        node.group.consumer_heartbeat_interval_ms.to_string(),
    );
    effective.insert("offsets.retention.minutes".to_string(), (node.group.offsets_retention_ms / 60_000).to_string());
    effective.insert(
        "offsets.retention.check.interval.ms".to_string(),
        node.group.offsets_retention_check_interval_ms.to_string(),
    );
    effective.insert("producer.id.expiration.ms".to_string(), node.producer_id_expiration_ms.to_string());
    effective.insert(
        "producer.id.expiration.check.interval.ms".to_string(),
        node.producer_id_expiration_check_interval_ms.to_string(),
    );
    effective.insert(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms".to_string(),
        node.txn_abort_check_interval_ms.to_string(),
    );
    effective.insert("transaction.max.timeout.ms".to_string(), node.txn_max_timeout_ms.to_string());
    effective.insert("transactional.id.expiration.ms".to_string(), node.txn_id_expiration_ms.to_string());
    effective.insert("transaction.state.log.num.partitions".to_string(), "50".to_string());
    for (k, v) in props {
        effective.entry(k.clone()).or_insert_with(|| v.clone());
    }
    node.broker_properties = effective;
    Ok(ServerConfig { listen, data_dir, node })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = build(&BTreeMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        let props = parse_properties("# comment\nlisteners=PLAINTEXT://127.0.0.1:19092\nlog.dirs = /tmp/x\nnum.partitions: 3\nlog.retention.hours=1\n").unwrap();
        let c = build(&props).unwrap();
        assert_eq!(c.listen.port(), 19092);
        assert_eq!(c.node.num_partitions, 3);
        assert_eq!(c.node.log.retention_ms, 3_600_000);
        assert_eq!(c.node.broker_properties["log.dirs"], "/tmp/x");
        assert!(build(&parse_properties("num.partitions=x").unwrap()).is_err());
        assert!(parse_properties("garbage line").is_err());
    }
}

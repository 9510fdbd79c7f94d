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
    /// The controller listener peers connect to, when this node is one of several voters.
    pub controller_listen: Option<SocketAddr>,
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

/// `NAME://host:port[,...]` → each listener's name, host and port, in order.
fn parse_listeners(value: &str) -> Result<Vec<(String, String, u16)>, String> {
    let mut out = Vec::new();
    for one in value.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let (name, rest) = one.split_once("://").unwrap_or(("PLAINTEXT", one));
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("listener {one:?} has no port"))?;
        let port: u16 = port.parse().map_err(|_| format!("listener {one:?}: bad port"))?;
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        out.push((name.trim().to_uppercase(), host.trim_matches(|c| c == '[' || c == ']').to_string(), port));
    }
    if out.is_empty() {
        return Err(format!("listeners {value:?} names no listener"));
    }
    Ok(out)
}

/// `PLAINTEXT://host:port[,...]` → the first listener's host and port.
fn parse_listener(value: &str) -> Result<(String, u16), String> {
    let (_, host, port) = parse_listeners(value)?.swap_remove(0);
    Ok((host, port))
}

fn socket_addr(host: &str, port: u16, what: &str) -> Result<SocketAddr, String> {
    format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("{}:{port}", if host == "localhost" { "127.0.0.1" } else { host }).parse())
        .map_err(|_| format!("{what}: cannot use {host}:{port} (give an IP address or localhost)"))
}

/// `controller.quorum.voters`: `id@host:port,...`.
fn parse_voters(value: &str) -> Result<BTreeMap<i32, (String, u16)>, String> {
    let mut out = BTreeMap::new();
    for one in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let bad = || format!("controller.quorum.voters: {one:?} is not id@host:port");
        let (id, addr) = one.split_once('@').ok_or_else(bad)?;
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if out.insert(id, (host.trim_matches(|c| c == '[' || c == ']').to_string(), port)).is_some() {
            return Err(format!("controller.quorum.voters names node {id} twice"));
        }
    }
    Ok(out)
}

/// What `listeners` and the controller properties say: the `listeners` value, the client
/// listener's host and port, and the controller listener of a cluster node.
struct Listeners {
    value: String,
    client: (String, u16),
    controller: Option<SocketAddr>,
}

/// The cluster's listeners: which one clients use, which one the controller listens on
/// (`controller.listener.names`), and the voters. A node given no voters is a cluster of one.
fn cluster_listeners(props: &BTreeMap<String, String>, node: &mut NodeConfig) -> Result<Listeners, String> {
    let listeners = props.get("listeners").cloned().unwrap_or_else(|| "PLAINTEXT://127.0.0.1:9092".to_string());
    let all = parse_listeners(&listeners)?;
    let controller_names: Vec<String> = props
        .get("controller.listener.names")
        .map_or("CONTROLLER", String::as_str)
        .split(',')
        .map(|n| n.trim().to_uppercase())
        .collect();
    let client = all
        .iter()
        .find(|(name, _, _)| !controller_names.contains(name))
        .ok_or("listeners: no listener for clients (every one is a controller listener)")?;
    let controller = all.iter().find(|(name, _, _)| controller_names.contains(name));
    if let Some(roles) = props.get("process.roles") {
        let mut roles: Vec<&str> = roles.split(',').map(str::trim).collect();
        roles.sort_unstable();
        if roles != ["broker", "controller"] {
            return Err(format!(
                "process.roles={:?}: Sluice runs combined nodes only (process.roles=broker,controller)",
                props["process.roles"]
            ));
        }
    }
    if props.contains_key("controller.quorum.bootstrap.servers") && !props.contains_key("controller.quorum.voters") {
        return Err("controller.quorum.bootstrap.servers (dynamic quorums, KIP-853) is not supported yet; \
                    give controller.quorum.voters"
            .into());
    }
    node.voters = match props.get("controller.quorum.voters") {
        Some(v) => parse_voters(v)?,
        None => BTreeMap::new(),
    };
    let controller_listen = if node.is_cluster() {
        if !node.voters.contains_key(&node.node_id.0) {
            return Err(format!(
                "node.id={} is not among controller.quorum.voters: Sluice runs combined nodes only",
                node.node_id.0
            ));
        }
        let (_, host, port) = controller
            .ok_or("listeners: a cluster node needs a controller listener (named in controller.listener.names)")?;
        Some(socket_addr(host, *port, "controller listener")?)
    } else {
        None
    };
    Ok(Listeners { value: listeners, client: (client.1.clone(), client.2), controller: controller_listen })
}

fn num<T: std::str::FromStr>(props: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, String> {
    props.get(key).map(|v| v.parse::<T>().map_err(|_| format!("{key}: {v:?} is not a valid number"))).transpose()
}

/// The broker lifecycle's and the quorum's timings, and the rack.
fn cluster_timings(props: &BTreeMap<String, String>, node: &mut NodeConfig) -> Result<(), String> {
    node.rack = props.get("broker.rack").cloned();
    for (key, field) in [
        ("broker.heartbeat.interval.ms", &mut node.broker_heartbeat_interval_ms),
        ("broker.session.timeout.ms", &mut node.broker_session_timeout_ms),
        ("controller.quorum.election.timeout.ms", &mut node.quorum_election_timeout_ms),
        ("controller.quorum.fetch.timeout.ms", &mut node.quorum_fetch_timeout_ms),
    ] {
        if let Some(v) = num::<u64>(props, key)? {
            *field = v.max(1);
        }
    }
    Ok(())
}

/// The replication properties (Kafka's names and defaults).
fn replication(props: &BTreeMap<String, String>, r: &mut sluice_core::config::ReplicationConfig) -> Result<(), String> {
    for (key, field) in [
        ("default.replication.factor", &mut r.default_replication_factor),
        ("offsets.topic.replication.factor", &mut r.offsets_topic_replication_factor),
        ("transaction.state.log.replication.factor", &mut r.transaction_state_log_replication_factor),
    ] {
        if let Some(v) = num::<i16>(props, key)? {
            if v < 1 {
                return Err(format!("{key} must be at least 1"));
            }
            *field = v;
        }
    }
    for (key, field) in [
        ("min.insync.replicas", &mut r.min_insync_replicas),
        ("transaction.state.log.min.isr", &mut r.transaction_state_log_min_isr),
    ] {
        if let Some(v) = num::<i32>(props, key)? {
            if v < 1 {
                return Err(format!("{key} must be at least 1"));
            }
            *field = v;
        }
    }
    if let Some(v) = num::<u64>(props, "replica.lag.time.max.ms")? {
        r.replica_lag_time_max_ms = v.max(1);
    }
    if let Some(v) = num::<u64>(props, "replica.fetch.wait.max.ms")? {
        r.replica_fetch_wait_max_ms = v;
    }
    if let Some(v) = num::<usize>(props, "replica.fetch.max.bytes")? {
        r.replica_fetch_max_bytes = v.max(1);
    }
    if let Some(v) = num::<usize>(props, "replica.fetch.response.max.bytes")? {
        r.replica_fetch_response_max_bytes = v.max(1);
    }
    if let Some(v) = props.get("auto.leader.rebalance.enable") {
        r.auto_leader_rebalance = v.parse().map_err(|_| format!("auto.leader.rebalance.enable: {v:?}"))?;
    }
    if let Some(v) = num::<u64>(props, "leader.imbalance.check.interval.seconds")? {
        r.leader_imbalance_check_interval_ms = v.max(1).saturating_mul(1000);
    }
    if props.get("unclean.leader.election.enable").is_some_and(|v| v == "true") {
        return Err("unclean.leader.election.enable=true: Sluice elects leaders only from the ISR".into());
    }
    Ok(())
}

/// The replication properties in force, as DescribeConfigs on the broker reports them.
fn replication_effective(r: &sluice_core::config::ReplicationConfig) -> Vec<(String, String)> {
    [
        ("default.replication.factor", r.default_replication_factor.to_string()),
        ("min.insync.replicas", r.min_insync_replicas.to_string()),
        ("offsets.topic.replication.factor", r.offsets_topic_replication_factor.to_string()),
        ("transaction.state.log.replication.factor", r.transaction_state_log_replication_factor.to_string()),
        ("transaction.state.log.min.isr", r.transaction_state_log_min_isr.to_string()),
        ("replica.lag.time.max.ms", r.replica_lag_time_max_ms.to_string()),
        ("replica.fetch.wait.max.ms", r.replica_fetch_wait_max_ms.to_string()),
        ("replica.fetch.max.bytes", r.replica_fetch_max_bytes.to_string()),
        ("replica.fetch.response.max.bytes", r.replica_fetch_response_max_bytes.to_string()),
        ("unclean.leader.election.enable", "false".to_string()),
        ("auto.leader.rebalance.enable", r.auto_leader_rebalance.to_string()),
        ("leader.imbalance.check.interval.seconds", (r.leader_imbalance_check_interval_ms / 1000).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Builds the configuration from properties (file values with overrides applied).
pub fn build(props: &BTreeMap<String, String>) -> Result<ServerConfig, String> {
    let mut node = NodeConfig::default();
    if let Some(id) = num::<i32>(props, "node.id")?.or(num::<i32>(props, "broker.id")?) {
        node.node_id = BrokerId(id);
    }
    let Listeners { value: listeners, client: (host, port), controller: controller_listen } =
        cluster_listeners(props, &mut node)?;
    let listen = socket_addr(&host, port, "listeners")?;
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
    cluster_timings(props, &mut node)?;
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
    replication(props, &mut node.replication)?;
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
    effective.extend(replication_effective(&node.replication));
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
    Ok(ServerConfig { listen, controller_listen, data_dir, node })
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
        assert!(c.controller_listen.is_none());
    }

    #[test]
    fn cluster_properties() {
        let text = "node.id=2\nprocess.roles=broker,controller\n\
                    listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093\n\
                    controller.listener.names=CONTROLLER\n\
                    controller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:19093,3@localhost:29093\n";
        let c = build(&parse_properties(text).unwrap()).unwrap();
        assert_eq!(c.listen.port(), 19092);
        assert_eq!(c.controller_listen.unwrap().port(), 19093);
        assert_eq!(c.node.voter_ids(), vec![1, 2, 3]);
        assert_eq!(c.node.voters[&3], ("localhost".to_string(), 29093));
        assert!(c.node.is_cluster());
        let refused = |extra: &str| build(&parse_properties(&format!("{text}{extra}")).unwrap()).unwrap_err();
        assert!(refused("process.roles=broker\n").contains("combined"));
        assert!(refused("node.id=7\n").contains("not among"));
        assert!(refused("listeners=PLAINTEXT://127.0.0.1:19092\n").contains("controller listener"));
        assert!(refused("controller.quorum.voters=1@h:1,1@h:2\n").contains("twice"));
        assert!(refused("controller.quorum.voters=x@h:1\n").contains("id@host:port"));
    }
}

//! Kafka-style configuration: a `server.properties` file, `--override key=value` on top, Kafka's
//! property names, safe single-node defaults when given nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_core::config::NodeConfig;

/// What the runtime needs besides the core's own configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The controller listener peers connect to, when this node is one of several voters.
    pub controller_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub node: NodeConfig,
    /// Properties given but not known (each naming the property probably meant).
    pub warnings: Vec<String>,
    /// Where the Prometheus endpoint listens (`metrics.listener`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `queued.max.requests`: inputs waiting for the core before connections stop being read.
    pub queued_max_requests: usize,
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

/// `advertised.listeners` → the host and port advertised for the client listener (the entry of
/// its name, else the first).
fn advertised(value: &str, client_listener: &str) -> Result<(String, u16), String> {
    let mut all = parse_listeners(value)?;
    let i = all.iter().position(|(name, _, _)| name == client_listener).unwrap_or(0);
    let (_, host, port) = all.swap_remove(i);
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

/// What `listeners` and the controller properties say: the client listener's host and port,
/// and the controller listener of a cluster node.
struct Listeners {
    client: (String, String, u16),
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
    // Kafka 4's own config/server.properties names its one controller this way (a standalone
    // dynamic quorum): that is a cluster of one. More controllers need a dynamic quorum.
    if let (Some(servers), None) =
        (props.get("controller.quorum.bootstrap.servers"), props.get("controller.quorum.voters"))
    {
        let n = servers.split(',').filter(|s| !s.trim().is_empty()).count();
        if n > 1 {
            return Err(format!(
                "controller.quorum.bootstrap.servers names {n} controllers: dynamic quorums (KIP-853) \
                 are not supported yet; give controller.quorum.voters"
            ));
        }
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
    Ok(Listeners { client: client.clone(), controller: controller_listen })
}

/// Builds the configuration from properties (file values with overrides applied): the core's
/// properties through the one table (`sluice_core::properties`), then the runtime's own
/// (listeners, the data directory, the voters).
pub fn build(props: &BTreeMap<String, String>) -> Result<ServerConfig, String> {
    let mut node = NodeConfig::default();
    let warnings = sluice_core::properties::apply(props, &mut node)?;
    let Listeners { client: (client_name, host, port), controller: controller_listen } =
        cluster_listeners(props, &mut node)?;
    let listen = socket_addr(&host, port, "listeners")?;
    let (adv_host, adv_port) = match props.get("advertised.listeners") {
        Some(v) => advertised(v, &client_name)?,
        None => (if host == "0.0.0.0" { "127.0.0.1".to_string() } else { host.clone() }, port),
    };
    node.advertised_host = adv_host;
    node.advertised_port = i32::from(adv_port);
    let dirs = props.get("log.dirs").or_else(|| props.get("log.dir")).cloned().unwrap_or_else(|| "./data".to_string());
    let mut dirs = dirs.split(',').map(str::trim).filter(|d| !d.is_empty());
    let data_dir = PathBuf::from(dirs.next().ok_or("log.dirs is empty")?);
    node.log_dir = std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone()).display().to_string();
    if dirs.next().is_some() {
        return Err("log.dirs: Sluice uses one log directory per node for now".to_string());
    }
    let metrics_listen = match props.get("metrics.listener").map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => {
            let hostport = v.strip_prefix("http://").unwrap_or(v).trim_end_matches('/');
            let (host, port) =
                hostport.rsplit_once(':').ok_or_else(|| format!("metrics.listener {v:?}: expected host:port"))?;
            let port: u16 = port.parse().map_err(|_| format!("metrics.listener {v:?}: bad port"))?;
            Some(socket_addr(host.trim_matches(|c| c == '[' || c == ']'), port, "metrics.listener")?)
        }
    };
    let count = |key: &str, default: usize| -> Result<usize, String> {
        match props.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse::<usize>().map_err(|_| format!("{key}: {v:?} is not a valid count")),
        }
    };
    Ok(ServerConfig {
        listen,
        controller_listen,
        data_dir,
        node,
        warnings,
        metrics_listen,
        queued_max_requests: count("queued.max.requests", 500)?.max(1),
    })
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
        assert!(build(&parse_properties("num.partitions=x").unwrap()).unwrap_err().contains("num.partitions"));
        let c = build(&parse_properties("log.retention.hour=1").unwrap()).unwrap();
        assert!(c.warnings[0].contains("log.retention.hours"), "{:?}", c.warnings);
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

    /// Kafka 4's shipped `config/server.properties` (KRaft, combined, standalone quorum) starts
    /// a single node unchanged, with no warning.
    #[test]
    fn kafkas_own_server_properties() {
        let text = "process.roles=broker,controller\nnode.id=1\n\
                    controller.quorum.bootstrap.servers=localhost:9093\n\
                    listeners=PLAINTEXT://:9092,CONTROLLER://:9093\ninter.broker.listener.name=PLAINTEXT\n\
                    advertised.listeners=CONTROLLER://localhost:9093,PLAINTEXT://localhost:9092\n\
                    controller.listener.names=CONTROLLER\n\
                    listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL\n\
                    num.network.threads=3\nnum.io.threads=8\nsocket.send.buffer.bytes=102400\n\
                    socket.receive.buffer.bytes=102400\nsocket.request.max.bytes=104857600\n\
                    log.dirs=/tmp/kraft-combined-logs\nnum.partitions=1\nnum.recovery.threads.per.data.dir=1\n\
                    offsets.topic.replication.factor=1\nshare.coordinator.state.topic.replication.factor=1\n\
                    share.coordinator.state.topic.min.isr=1\ntransaction.state.log.replication.factor=1\n\
                    transaction.state.log.min.isr=1\nlog.retention.hours=168\nlog.segment.bytes=1073741824\n\
                    log.retention.check.interval.ms=300000\n";
        let c = build(&parse_properties(text).unwrap()).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(!c.node.is_cluster());
        assert_eq!(c.listen.to_string(), "0.0.0.0:9092");
        assert_eq!((c.node.advertised_host.as_str(), c.node.advertised_port), ("localhost", 9092));
        assert_eq!(c.node.replication.offsets_topic_replication_factor, 1);
        let two = format!("{text}controller.quorum.bootstrap.servers=a:1,b:2\n");
        assert!(build(&parse_properties(&two).unwrap()).unwrap_err().contains("dynamic quorums"));
    }
}

#[cfg(test)]
mod readme {
    /// The README's table of properties is the broker's own table: a property added, renamed or
    /// given a new default shows up there or this test fails. `SLUICE_BLESS=1` rewrites it.
    #[test]
    fn readme_lists_the_properties_the_broker_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let text = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- properties:begin -->\n", "<!-- properties:end -->");
        let from = text.find(begin).expect("README has the properties:begin marker") + begin.len();
        let to = text.find(end).expect("README has the properties:end marker");
        let want = sluice_core::properties::markdown_table();
        if text[from..to] != want {
            if std::env::var_os("SLUICE_BLESS").is_some() {
                std::fs::write(path, format!("{}{want}{}", &text[..from], &text[to..])).unwrap();
            } else {
                panic!("README.md's property table differs from the broker's; run SLUICE_BLESS=1 cargo test -p sluice-runtime-real readme");
            }
        }
    }
}

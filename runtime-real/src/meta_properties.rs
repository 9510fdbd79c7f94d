//! Kafka's `meta.properties` in the data directory: which cluster and which node the directory
//! belongs to. Written at the first start; checked at every later one, so a directory is never
//! served by another node or mixed into another cluster.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_core::NodeConfig;

use crate::config::parse_properties;

pub const FILE: &str = "meta.properties";

/// The cluster id a node uses when its directory has none yet. A cluster of one keeps the id
/// Sluice has always used; the nodes of a cluster derive one from their shared voters, so
/// nodes started from the same `controller.quorum.voters` agree without a format step.
pub fn default_cluster_id(node: &NodeConfig) -> String {
    if !node.is_cluster() {
        return node.cluster_id.clone();
    }
    let text: String = node.voters.iter().map(|(id, (h, p))| format!("{id}@{h}:{p},")).collect();
    // Two 64-bit FNV-1a hashes (different offsets) make the 16 bytes of a Kafka-style id.
    let fnv = |basis: u64| text.bytes().fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv(0x8422_2325_cbf2_9ce4).to_be_bytes());
    base64_url(&bytes)
}

/// Unpadded URL-safe base64, as Kafka prints ids (22 characters for 16 bytes).
fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Reads the directory's `meta.properties` (writing it at the first start) and sets the
/// node's cluster id from it. A directory of another node is refused with a clear error.
pub fn ensure(dir: &Path, node: &mut NodeConfig) -> Result<(), String> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let props = parse_properties(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            check(&props, node).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            node.cluster_id = default_cluster_id(node);
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let text = format!(
                "# Written by Sluice at this directory's first start.\nversion=1\ncluster.id={}\nnode.id={}\n",
                node.cluster_id, node.node_id.0
            );
            // Written whole to a temporary name, synced, then renamed: never half a file.
            let tmp = dir.join(format!("{FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn check(props: &BTreeMap<String, String>, node: &mut NodeConfig) -> Result<(), String> {
    let id = props.get("node.id").ok_or("no node.id")?;
    if id.parse::<i32>().ok() != Some(node.node_id.0) {
        return Err(format!(
            "this data directory belongs to node {id}, but this is node.id={}; give each node its own log.dirs",
            node.node_id.0
        ));
    }
    let cluster = props.get("cluster.id").filter(|c| !c.is_empty()).ok_or("no cluster.id")?;
    node.cluster_id = cluster.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = NodeConfig {
            node_id: sluice_core::BrokerId(2),
            voters: [(1, ("127.0.0.1".to_string(), 9093)), (2, ("127.0.0.1".to_string(), 9094))].into(),
            ..NodeConfig::default()
        };
        ensure(dir.path(), &mut node).unwrap();
        let id = node.cluster_id.clone();
        assert_eq!(id.len(), 22);
        assert_eq!(id, default_cluster_id(&node), "every node of these voters derives the same id");
        node.voters.insert(3, ("127.0.0.1".to_string(), 9095));
        assert_ne!(default_cluster_id(&node), id);
        ensure(dir.path(), &mut node).unwrap();
        assert_eq!(node.cluster_id, id, "the stored id wins over a derived one");
        node.node_id = sluice_core::BrokerId(3);
        assert!(ensure(dir.path(), &mut node).unwrap_err().contains("belongs to node 2"));
    }

    #[test]
    fn base64_like_kafka() {
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64_url(&[0u8; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
    }
}

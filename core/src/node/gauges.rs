//! The node's metrics snapshot: its counters and timings (`crate::metrics`) plus gauges read
//! off its state now (partitions, leadership, the ISR, logs, the controller, consumer lag).

use super::{Node, PartState};
use crate::metrics::{Family, Kind};
use crate::replica::Role;

impl Node {
    /// Everything the metrics endpoint serves, as of now.
    pub fn metrics(&self) -> Vec<Family> {
        let mut out = self.metrics.families();
        let (mut partitions, mut leaders, mut under, mut under_min, mut offline) = (0, 0, 0, 0, 0);
        let mut end = Family::new("kafka_log_log_logendoffset", "Offset after the last record written", Kind::Gauge);
        let mut start = Family::new("kafka_log_log_logstartoffset", "First offset kept", Kind::Gauge);
        let mut size = Family::new("kafka_log_log_size", "Bytes held by the partition's log", Kind::Gauge);
        let mut segments = Family::new("kafka_log_log_numlogsegments", "Segment files", Kind::Gauge);
        let mut hw = Family::new(
            "kafka_cluster_partition_highwatermark",
            "Offset below which records are acknowledged and readable",
            Kind::Gauge,
        );
        for (name, t) in &self.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.state == PartState::Remote {
                    continue;
                }
                partitions += 1;
                offline += u32::from(p.state == PartState::Offline);
                if let Role::Leader(l) = &p.role {
                    leaders += 1;
                    let replicas = p.replicas.len().max(1);
                    under += u32::from(l.isr.len() < replicas);
                    under_min += u32::from(l.isr.len() < t.settings.min_insync_replicas.min(replicas));
                }
                let labels = vec![("topic", name.clone()), ("partition", i.to_string())];
                let l = &p.log;
                end.samples.push((labels.clone(), l.log_end_offset as f64));
                start.samples.push((labels.clone(), l.log_start_offset as f64));
                size.samples.push((labels.clone(), l.size_bytes() as f64));
                segments.samples.push((labels.clone(), l.segments.len() as f64));
                hw.samples.push((labels, l.high_watermark as f64));
            }
        }
        out.extend([end, start, size, segments, hw]);
        let gauge = |name: &str, help: &'static str, v: u32| Family::one(name, help, Kind::Gauge, f64::from(v));
        out.push(gauge("kafka_server_replicamanager_partitioncount", "Partition replicas held here", partitions));
        out.push(gauge("kafka_server_replicamanager_leadercount", "Partitions led here", leaders));
        out.push(gauge(
            "kafka_server_replicamanager_underreplicatedpartitions",
            "Partitions led here whose ISR lacks a replica",
            under,
        ));
        out.push(gauge(
            "kafka_server_replicamanager_underminisrpartitioncount",
            "Partitions led here with fewer in-sync replicas than min.insync.replicas",
            under_min,
        ));
        out.push(gauge(
            "kafka_server_replicamanager_offlinereplicacount",
            "Replicas here taken offline by a disk error",
            offline,
        ));
        out.extend(self.controller_gauges());
        out.push(self.consumer_lag());
        out
    }

    /// The active controller's view (zero elsewhere, as in Kafka).
    fn controller_gauges(&self) -> Vec<Family> {
        let active = self.is_controller();
        let image = &self.cluster.image;
        let (mut topics, mut partitions, mut offline) = (0u32, 0u32, 0u32);
        if active {
            for t in image.topics.values() {
                topics += 1;
                for p in &t.parts {
                    partitions += 1;
                    offline += u32::from(!p.replicas.is_empty() && p.leader == crate::metadata::NO_LEADER);
                }
            }
        }
        let gauge = |name: &str, help: &'static str, v: u32| Family::one(name, help, Kind::Gauge, f64::from(v));
        vec![
            gauge(
                "kafka_controller_kafkacontroller_activecontrollercount",
                "1 on the active controller",
                u32::from(active),
            ),
            gauge("kafka_controller_kafkacontroller_globaltopiccount", "Topics in the cluster", topics),
            gauge("kafka_controller_kafkacontroller_globalpartitioncount", "Partitions in the cluster", partitions),
            gauge("kafka_controller_kafkacontroller_offlinepartitionscount", "Partitions without a leader", offline),
        ]
    }

    /// For each group coordinated here and each partition it committed an offset for that is
    /// led here: the high watermark less the committed offset.
    fn consumer_lag(&self) -> Family {
        let mut lag = Family::new(
            "kafka_consumergroup_lag",
            "Records between a group's committed offset and the high watermark",
            Kind::Gauge,
        );
        for (group, offsets) in &self.offsets {
            for ((topic, partition), c) in offsets {
                let Some(p) = self.topics.get(topic).and_then(|t| t.partition(*partition)) else { continue };
                if !matches!(p.role, Role::Leader(_)) || p.state == PartState::Remote {
                    continue;
                }
                let labels = vec![
                    ("consumergroup", group.clone()),
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ];
                lag.samples.push((labels, (p.log.high_watermark - c.offset).max(0) as f64));
            }
        }
        lag
    }
}

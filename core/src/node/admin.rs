//! ApiVersions, Metadata, DescribeCluster, DescribeConfigs, and the topic admin requests
//! (CreateTopics, DeleteTopics, CreatePartitions), which change the metadata log.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{DiskOp, Job, JobDone, JobId, Node, PartState, Partition, Purpose, Then, Topic, TopicId, Waiter};
use crate::config::{NodeConfig, TopicSettings, TOPIC_CONFIG_KEYS};
use crate::io::{DiskError, DiskReply};
use crate::limits;
use crate::log::PartitionLog;
use crate::metadata::{self, MetaRecord, ALL_BROKERS};
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::ConnId;

/// Kafka's value for "authorized operations not requested".
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

impl Node {
    pub(super) fn handle_api_versions(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        _body: Bytes,
    ) -> Result<(), FrameError> {
        // The body (client name and version) is informational; a v3+ body that does not decode
        // still gets the version list, as Kafka does.
        let resp = protocol::api_versions_answer(ctx.version);
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    /// The brokers a client may be sent to: this one and every live one the cluster knows.
    fn broker_entries(&self) -> Vec<MetadataResponseBroker> {
        let mut ids = self.live_broker_ids();
        if crate::mutants::active(crate::mutants::Mutant::FencedBrokerInMetadata) {
            ids = self.cluster.image.brokers.keys().copied().collect();
        }
        ids.into_iter()
            .filter_map(|id| {
                let (host, port, rack) = self.broker_endpoint(id)?;
                let mut b = MetadataResponseBroker::default();
                b.node_id = BrokerId(id);
                b.host = sb(host);
                b.port = port;
                b.rack = rack.map(sb);
                Some(b)
            })
            .collect()
    }

    pub(super) fn handle_metadata(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: MetadataRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let auto_create = self.config.auto_create_topics_enable && (ctx.version < 4 || req.allow_auto_topic_creation);
        // Which topics: all (None, or an empty list before v1), or the ones named.
        let wanted: Option<Vec<(Option<String>, Uuid)>> = match &req.topics {
            None => None,
            Some(t) if t.is_empty() && ctx.version == 0 => None,
            Some(t) => Some(t.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)).collect()),
        };
        let mut resp = MetadataResponse::default();
        resp.brokers = self.broker_entries();
        if ctx.version >= 2 {
            resp.cluster_id = Some(sb(self.config.cluster_id.clone()));
        }
        if ctx.version >= 1 {
            resp.controller_id = BrokerId(self.controller().unwrap_or(-1));
        }
        resp.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        match wanted {
            None => {
                let names: Vec<String> =
                    self.topics.iter().filter(|(_, t)| t.creating.is_none()).map(|(n, _)| n.clone()).collect();
                for n in names {
                    resp.topics.push(self.topic_metadata(&n, ctx.version));
                }
            }
            Some(list) => {
                let mut jobs = BTreeSet::new();
                for (name, id) in list {
                    let name = match name {
                        Some(n) => n,
                        None => match self.names.get(id.as_bytes()) {
                            Some(n) => n.clone(),
                            None => {
                                let mut t = MetadataResponseTopic::default();
                                t.error_code = KafkaError::UnknownTopicId.code();
                                t.topic_id = id; // only v10+ can name topics by id
                                t.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
                                resp.topics.push(t);
                                continue;
                            }
                        },
                    };
                    if let Some(job) = self.topics.get(&name).and_then(|t| t.creating) {
                        jobs.insert(job);
                        continue;
                    }
                    let wanted = !self.topics.contains_key(&name)
                        && auto_create
                        && metadata::valid_topic_name(&name)
                        && !self.deleting.contains_key(&name);
                    match wanted.then(|| self.auto_create(&name)).flatten() {
                        Some(Ok(job)) => {
                            jobs.insert(job);
                            continue;
                        }
                        Some(Err(code)) => {
                            let mut t = self.topic_metadata(&name, ctx.version);
                            t.error_code = code;
                            resp.topics.push(t);
                            continue;
                        }
                        None => {}
                    }
                    resp.topics.push(self.topic_metadata(&name, ctx.version));
                }
                if !jobs.is_empty() {
                    // Answer once the topics exist, so the client sees them with leaders.
                    self.waiters.push(Waiter {
                        conn,
                        seq,
                        jobs,
                        failed: BTreeSet::new(),
                        then: Then::Redispatch { ctx, body },
                    });
                    return Ok(());
                }
            }
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
        Ok(())
    }

    /// Creates a topic a Metadata request named: its job here (the controller), or the error
    /// to answer while the controller creates it on request (the client retries until the
    /// topic has leaders, as Kafka's brokers answer); `None` if it cannot be created.
    fn auto_create(&mut self, name: &str) -> Option<Result<JobId, i16>> {
        if !self.is_controller() {
            self.ask_controller_to_create(name);
            return Some(Err(KafkaError::LeaderNotAvailable.code()));
        }
        if self.topic_name_proposed(name) {
            return None;
        }
        let n = self.config.num_partitions;
        match self.create_topic(name, n, self.auto_create_replication_factor(), BTreeMap::new()) {
            Ok(job) => {
                tracing::info!(topic = %name, partitions = n, "auto-creating topic");
                Some(Ok(job))
            }
            Err(e) => {
                tracing::warn!(topic = %name, error = ?e, "auto-create failed");
                None
            }
        }
    }

    fn topic_metadata(&self, name: &str, version: i16) -> MetadataResponseTopic {
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(sb(name)));
        t.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        let Some(topic) = self.topics.get(name) else {
            t.error_code = if metadata::valid_topic_name(name) {
                KafkaError::UnknownTopicOrPartition
            } else {
                KafkaError::InvalidTopic
            }
            .code();
            return t;
        };
        if version >= 10 {
            t.topic_id = Uuid::from_bytes(topic.id);
        }
        if version >= 1 {
            t.is_internal = name == super::groups::OFFSETS_TOPIC;
        }
        let me = self.config.node_id.0;
        for (i, p) in topic.partitions.iter().enumerate() {
            if p.state == PartState::Creating {
                continue;
            }
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = i32::try_from(i).expect("bounded partition count");
            let tp = (topic.id, mp.partition_index);
            let img = self.registration(tp).unwrap_or_else(|| metadata::PartitionImage::new(vec![me]));
            let leader = self.partition_leader(tp).map(|(l, _)| l);
            mp.leader_id = BrokerId(leader.unwrap_or(-1));
            if version >= 7 {
                mp.leader_epoch = img.leader_epoch;
            }
            mp.replica_nodes = img.replicas.iter().map(|r| BrokerId(*r)).collect();
            mp.isr_nodes = img.isr.iter().map(|r| BrokerId(*r)).collect();
            // Replicas on fenced brokers, and this node's own when its copy failed.
            let offline: Vec<BrokerId> = img
                .replicas
                .iter()
                .filter(|r| {
                    if **r == me {
                        p.state == PartState::Offline
                    } else {
                        self.cluster.image.brokers.get(r).is_none_or(|b| b.fenced)
                    }
                })
                .map(|r| BrokerId(*r))
                .collect();
            if version >= 5 {
                mp.offline_replicas = offline;
            }
            let mine_unready = leader == Some(me) && p.state != PartState::Online;
            if leader.is_none() || mine_unready {
                mp.error_code = if p.state == PartState::Offline && leader == Some(me) {
                    KafkaError::KafkaStorageError
                } else {
                    KafkaError::LeaderNotAvailable
                }
                .code();
            }
            t.partitions.push(mp);
        }
        t
    }

    pub(super) fn handle_describe_cluster(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DescribeClusterRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = sb(self.config.cluster_id.clone());
        resp.controller_id = BrokerId(self.controller().unwrap_or(-1));
        resp.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        if ctx.version >= 1 {
            resp.endpoint_type = req.endpoint_type.max(1);
        }
        resp.brokers = self
            .broker_entries()
            .into_iter()
            .map(|m| {
                let mut b = DescribeClusterBroker::default();
                b.broker_id = m.node_id;
                b.host = m.host;
                b.port = m.port;
                b.rack = m.rack;
                b
            })
            .collect();
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    pub(super) fn handle_describe_configs(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DescribeConfigsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = DescribeConfigsResponse::default();
        for r in &req.resources {
            let mut res = DescribeConfigsResult::default();
            res.resource_type = r.resource_type;
            res.resource_name = r.resource_name.clone();
            let keys: Option<BTreeSet<&str>> =
                r.configuration_keys.as_ref().map(|k| k.iter().map(|s| s.as_str()).collect());
            let wanted = |k: &str| keys.as_ref().is_none_or(|set| set.contains(k));
            match r.resource_type {
                // TOPIC
                2 => match self.topics.get(r.resource_name.as_str()) {
                    None => {
                        res.error_code = KafkaError::UnknownTopicOrPartition.code();
                        res.error_message = Some(sb("no such topic"));
                    }
                    Some(t) => {
                        for key in TOPIC_CONFIG_KEYS.iter().filter(|k| wanted(k.name)) {
                            res.configs.push(self.topic_config_entry(ctx.version, &req, &t.configs, key));
                        }
                    }
                },
                // BROKER: this one, or (no name) the cluster-wide dynamic defaults alone.
                4 => {
                    let all = r.resource_name.is_empty();
                    if !all && r.resource_name.as_str() != self.me().to_string() {
                        res.error_code = KafkaError::InvalidRequest.code();
                        res.error_message = Some(sb("not this broker"));
                    } else {
                        for p in crate::properties::BROKER_PROPERTIES.iter().filter(|p| wanted(p.name)) {
                            res.configs.extend(self.broker_config_entry(ctx.version, &req, p, all));
                        }
                    }
                }
                _ => {
                    res.error_code = KafkaError::InvalidRequest.code();
                    res.error_message = Some(sb("unsupported resource type"));
                }
            }
            resp.results.push(res);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        Ok(())
    }

    /// A broker property's values set on this broker, the one in force first, each with its
    /// DescribeConfigs source: dynamic for this broker (2), dynamic cluster-wide (3), set in
    /// the file (4).
    fn broker_property_levels(&self, name: &str) -> Vec<(String, i8)> {
        let dynamic = &self.cluster.image.broker_configs;
        let mut out = Vec::new();
        for (scope, source) in [(self.me(), 2), (ALL_BROKERS, 3)] {
            if let Some(v) = dynamic.get(&scope).and_then(|c| c.get(name)) {
                out.push((v.clone(), source));
            }
        }
        out.extend(self.config.broker_properties.get(name).map(|v| (v.clone(), 4)));
        out
    }

    /// One broker property as DescribeConfigs gives it: where its value comes from, and its
    /// synonyms from the one in force down to the default. For the cluster-wide resource,
    /// only a property set cluster-wide.
    fn broker_config_entry(
        &self,
        version: i16,
        req: &DescribeConfigsRequest,
        p: &crate::properties::Property,
        cluster_wide: bool,
    ) -> Option<DescribeConfigsResourceResult> {
        let mut levels = self.broker_property_levels(p.name);
        if cluster_wide {
            levels.retain(|l| l.1 == 3);
            levels.first()?;
        }
        let default = (p.default)(&self.static_config);
        let (value, source) = levels.first().cloned().unwrap_or_else(|| (default.clone(), 5));
        let mut c =
            config_entry(version, p.name, &value, source, p.kind.config_type(), p.doc, req.include_documentation);
        c.read_only = !p.dynamic;
        if req.include_synonyms {
            for (v, source) in &levels {
                c.synonyms.push(synonym(p.name, v, *source));
            }
            if !cluster_wide {
                c.synonyms.push(synonym(p.name, &default, 5));
            }
        }
        Some(c)
    }

    /// One topic config as DescribeConfigs gives it: its override, or what it inherits from
    /// this broker's properties (dynamic, then static), or the default; with synonyms.
    fn topic_config_entry(
        &self,
        version: i16,
        req: &DescribeConfigsRequest,
        overrides: &BTreeMap<String, String>,
        key: &crate::config::TopicConfigKey,
    ) -> DescribeConfigsResourceResult {
        let default = self.config.topic_config_default(key.name).unwrap_or_default();
        // The broker properties it inherits from as set on this broker, the one in force first.
        let mut inherited: Vec<(&str, String, i8)> = crate::config::broker_synonyms(key.name)
            .iter()
            .rev()
            .flat_map(|b| self.broker_property_levels(b).into_iter().map(move |(v, source)| (*b, v, source)))
            .collect();
        inherited.sort_by_key(|i| i.2);
        let (value, source) = match overrides.get(key.name) {
            Some(v) => (v.clone(), 1), // TOPIC_CONFIG
            None => (default, inherited.first().map_or(5, |i| i.2)),
        };
        let mut c =
            config_entry(version, key.name, &value, source, key.config_type, key.doc, req.include_documentation);
        if req.include_synonyms {
            if source == 1 {
                c.synonyms.push(synonym(key.name, &value, 1));
            }
            for (name, v, source) in &inherited {
                c.synonyms.push(synonym(name, v, *source));
            }
            let default_name = crate::config::broker_synonyms(key.name).last().copied();
            let untouched = NodeConfig::default();
            let default = match default_name.and_then(crate::properties::find) {
                Some(p) => ((p.default)(&untouched), p.name),
                None => (untouched.topic_config_default(key.name).unwrap_or_default(), key.name),
            };
            c.synonyms.push(synonym(default.1, &default.0, 5));
        }
        c
    }

    /// DescribeLogDirs: the one data directory, with the size of every partition replica held
    /// here (all of them, or those asked for) and how far a follower is behind its high
    /// watermark.
    pub(super) fn handle_describe_log_dirs(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        use kafka_protocol::messages::describe_log_dirs_response::{
            DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
        };
        let req: DescribeLogDirsRequest = protocol::decode_body(body, ctx.version)?;
        let wanted: Option<BTreeMap<&str, BTreeSet<i32>>> = req
            .topics
            .as_ref()
            .map(|ts| ts.iter().map(|t| (t.topic.0.as_str(), t.partitions.iter().copied().collect())).collect());
        let mut dir = DescribeLogDirsResult::default();
        dir.log_dir = sb(self.config.log_dir.clone());
        dir.total_bytes = -1;
        dir.usable_bytes = -1;
        for (name, t) in &self.topics {
            let want = wanted.as_ref().map(|w| w.get(name.as_str()));
            if want == Some(None) {
                continue;
            }
            let mut topic = DescribeLogDirsTopic::default();
            topic.name = TopicName(sb(name.clone()));
            for (i, p) in t.partitions.iter().enumerate() {
                let index = i32::try_from(i).expect("bounded");
                if p.state == PartState::Remote || want.flatten().is_some_and(|ps| !ps.contains(&index)) {
                    continue;
                }
                let mut d = DescribeLogDirsPartition::default();
                d.partition_index = index;
                d.partition_size = i64::try_from(p.log.size_bytes()).unwrap_or(i64::MAX);
                d.offset_lag = (p.log.high_watermark - p.log.log_end_offset).max(0);
                topic.partitions.push(d);
            }
            if !topic.partitions.is_empty() {
                dir.topics.push(topic);
            }
        }
        let mut resp = DescribeLogDirsResponse::default();
        resp.results.push(dir);
        if ctx.version >= 4 {
            // The file system's size and free bytes (version 4 on) come from the runtime.
            let purpose = Purpose::LogDirSpace { conn, seq, ctx: ctx.clone(), resp: Box::new(resp) };
            self.issue(DiskOp::Space, purpose);
        } else {
            self.respond_bytes(conn, seq, protocol::encode_response(ctx, &resp));
        }
        Ok(())
    }

    /// The data directory's file system measured: the DescribeLogDirs answer waiting on it is
    /// sent, with -1 for both (Kafka's "unknown") should the runtime not tell.
    pub(super) fn on_log_dir_space(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        mut resp: DescribeLogDirsResponse,
        result: Result<DiskReply, DiskError>,
    ) {
        let space = match result {
            Ok(DiskReply::Space { total, usable }) => Some((total, usable)),
            Ok(other) => {
                tracing::warn!(?other, "the file system's size came back as something else");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the file system's size could not be read");
                None
            }
        };
        if let (Some((total, usable)), Some(dir)) = (space, resp.results.first_mut()) {
            dir.total_bytes = i64::try_from(total).unwrap_or(i64::MAX);
            dir.usable_bytes = i64::try_from(usable).unwrap_or(i64::MAX);
        }
        self.respond_bytes(conn, seq, protocol::encode_response(&ctx, &resp));
    }

    /// Starts creating a topic: the metadata record, the partition directories and their first
    /// segments. Returns the job that finishes when all of it is durable.
    pub(super) fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        rf: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<JobId, KafkaError> {
        self.create_topic_placed(name, None, partitions, rf, configs)
    }

    /// Creates a topic with the replicas given (a manual assignment, checked already), or
    /// with `partitions` of `rf` replicas placed on the live brokers.
    pub(super) fn create_topic_placed(
        &mut self,
        name: &str,
        manual: Option<Vec<Vec<i32>>>,
        partitions: i32,
        rf: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<JobId, KafkaError> {
        if !self.is_controller() {
            return Err(KafkaError::NotController);
        }
        if manual.is_none() {
            self.check_replication_factor(rf).map_err(|_| KafkaError::InvalidReplicationFactor)?;
        }
        let settings = TopicSettings::resolve(&self.config, &configs)?;
        let total: usize = self.topics.values().map(|t| t.partitions.len()).sum();
        if total + usize::try_from(partitions).unwrap_or(usize::MAX) > limits::PARTITIONS_PER_NODE_MAX {
            return Err(KafkaError::PolicyViolation);
        }
        let id = self.new_topic_id();
        let replicas = match manual {
            Some(replicas) => replicas,
            None => {
                let rf = usize::try_from(rf).expect("checked");
                self.place_partitions(usize::try_from(partitions).expect("validated"), 0, rf)
            }
        };
        let (job, _) = self.partitions_job(&replicas, 1, JobDone::TopicReady { name: name.to_string(), id });
        let rec = MetaRecord::TopicPlaced {
            name: name.to_string(),
            id,
            configs: configs.clone().into_iter().collect(),
            replicas: replicas.clone(),
        };
        self.meta_append(&rec, job);
        let partitions = self.partitions_for(name, 0, &replicas, job);
        let topic = Topic { id, configs, settings, partitions, creating: Some(job) };
        self.names.insert(id, name.to_string());
        self.topics.insert(name.to_string(), topic);
        Ok(job)
    }

    /// A CreateTopics entry's manual replica assignment (`kafka-topics --replica-assignment`),
    /// checked as Kafka's controller checks it: `None` when there is none.
    fn manual_assignment(&self, t: &CreatableTopic) -> Option<Result<Vec<Vec<i32>>, (KafkaError, String)>> {
        if t.assignments.is_empty() {
            return None;
        }
        let bad = |msg: String| Some(Err((KafkaError::InvalidReplicaAssignment, msg)));
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Some(Err((
                KafkaError::InvalidRequest,
                "a manual replica assignment was given, but numPartitions or replicationFactor is not -1".to_string(),
            )));
        }
        if t.assignments.len() > usize::try_from(limits::PARTITIONS_PER_TOPIC_MAX).unwrap_or(0) {
            return Some(Err((
                KafkaError::InvalidPartitions,
                format!("partitions must be 1..={}", limits::PARTITIONS_PER_TOPIC_MAX),
            )));
        }
        let registered = |id: i32| id == self.me() || self.cluster.image.brokers.contains_key(&id);
        let mut out: Vec<Vec<i32>> = Vec::with_capacity(t.assignments.len());
        for (i, a) in t.assignments.iter().enumerate() {
            if usize::try_from(a.partition_index).ok() != Some(i) {
                return bad(format!("partitions were not given in order: expected {i}, got {}", a.partition_index));
            }
            let replicas: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
            if replicas.is_empty() {
                return bad(format!("partition {i}'s replica list is empty"));
            }
            if let Some(dup) = replicas.iter().enumerate().find_map(|(j, r)| replicas[..j].contains(r).then_some(*r)) {
                return bad(format!("partition {i} names broker {dup} more than once"));
            }
            if let Some(unknown) = replicas.iter().find(|&&r| !registered(r)) {
                return bad(format!("partition {i} names broker {unknown}, but no such broker is registered"));
            }
            if let Some(first) = out.first().filter(|f| f.len() != replicas.len()) {
                return bad(format!(
                    "partition {i} has {} replica(s), but the partitions before it have {}",
                    replicas.len(),
                    first.len()
                ));
            }
            out.push(replicas);
        }
        Some(Ok(out))
    }

    /// A replication factor is at least one and at most the live brokers.
    pub(super) fn check_replication_factor(&self, rf: i16) -> Result<(), String> {
        let brokers = self.live_broker_ids().len();
        if rf < 1 || usize::try_from(rf).unwrap_or(0) > brokers {
            return Err(format!("replication factor {rf} is not in 1..={brokers} (the live brokers)"));
        }
        Ok(())
    }

    /// A fresh, empty partition: its directory and first segment, each op counted in `job`.
    pub(super) fn new_partition(
        &mut self,
        topic: &str,
        partition: i32,
        replicas: Vec<i32>,
        job: JobId,
        state: PartState,
    ) -> Partition {
        let dir = metadata::partition_dir(topic, partition);
        self.issue(DiskOp::CreateDir { path: dir.clone() }, Purpose::Job(job));
        let mut log = PartitionLog::empty(dir);
        let mut ops = Vec::new();
        let mut next = self.next_file;
        log.add_segment(0, self.now.wall_ms, &mut next, &mut ops);
        self.next_file = next;
        self.issue_all(ops, || Purpose::Job(job));
        let role = crate::replica::Role::Idle { leader_epoch: 0 };
        Partition {
            replicas,
            log,
            state,
            sync: None,
            recovery_sync_failures: 0,
            written_end: 0,
            role,
            copy: 0,
            log_start_wanted: 0,
        }
    }

    pub(super) fn handle_create_topics(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: CreateTopicsRequest = protocol::decode_body(body.clone(), ctx.version)?;
        // A name whose old incarnation is still being removed, or that is being created (its
        // record not yet committed, and perhaps never): wait for that first. Answering
        // TOPIC_ALREADY_EXISTS now would tell a client whose first try was cut off that a
        // topic exists which a crash may yet take back.
        let busy = |t: &CreatableTopic| {
            let name = t.name.0.as_str();
            self.deleting.get(name).copied().or_else(|| self.topics.get(name).and_then(|t| t.creating))
        };
        if let Some(job) = req.topics.iter().find_map(busy) {
            self.park(conn, seq, job, Then::Redispatch { ctx, body });
            return Ok(());
        }
        let mut resp = CreateTopicsResponse::default();
        let mut jobs = Vec::new();
        let mut seen = BTreeSet::new();
        for t in &req.topics {
            let name = t.name.0.to_string();
            let mut r = CreatableTopicResult::default();
            r.name = t.name.clone();
            r.num_partitions = -1;
            r.replication_factor = -1;
            let manual = self.manual_assignment(t);
            let (partitions, rf) = match &manual {
                Some(Ok(replicas)) => (
                    i32::try_from(replicas.len()).unwrap_or(i32::MAX),
                    replicas.first().map_or(0, |r| i16::try_from(r.len()).unwrap_or(i16::MAX)),
                ),
                _ if t.num_partitions == -1 => (self.config.num_partitions, t.replication_factor),
                _ => (t.num_partitions, t.replication_factor),
            };
            let rf = if rf == -1 { self.config.replication.default_replication_factor } else { rf };
            let configs: BTreeMap<String, String> =
                t.configs.iter().filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string()))).collect();
            let check = if !seen.insert(name.clone()) {
                Err((KafkaError::InvalidRequest, "topic named twice in one request".to_string()))
            } else if !metadata::valid_topic_name(&name) {
                Err((KafkaError::InvalidTopic, format!("illegal topic name {name:?}")))
            } else if !self.is_controller() {
                // Only the controller knows: another broker's view may hold a proposal that is
                // never committed (seed 4737: a follower's uncommitted log tail).
                Err((KafkaError::NotController, "this broker is not the active controller".to_string()))
            } else if self.topics.contains_key(&name) || self.topic_name_proposed(&name) {
                Err((KafkaError::TopicAlreadyExists, format!("topic {name:?} already exists")))
            } else if partitions <= 0 || partitions > limits::PARTITIONS_PER_TOPIC_MAX {
                Err((
                    KafkaError::InvalidPartitions,
                    format!("partitions must be 1..={}", limits::PARTITIONS_PER_TOPIC_MAX),
                ))
            } else if let Some(Err(e)) = &manual {
                Err(e.clone())
            } else if let (None, Err(msg)) = (&manual, self.check_replication_factor(rf)) {
                Err((KafkaError::InvalidReplicationFactor, msg))
            } else {
                TopicSettings::resolve(&self.config, &configs)
                    .map(|_| ())
                    .map_err(|e| (KafkaError::InvalidConfig, format!("{e:?}")))
            };
            match check {
                Err((e, msg)) => {
                    r.error_code = e.code();
                    r.error_message = Some(sb(msg));
                }
                Ok(()) if req.validate_only => {
                    if ctx.version >= 5 {
                        r.num_partitions = partitions;
                        r.replication_factor = rf;
                    }
                }
                Ok(()) => {
                    match self.create_topic_placed(&name, manual.and_then(Result::ok), partitions, rf, configs.clone())
                    {
                        Err(e) => r.error_code = e.code(),
                        Ok(job) => {
                            if ctx.version >= 7 {
                                r.topic_id = Uuid::from_bytes(self.topics[&name].id);
                            }
                            if ctx.version >= 5 {
                                r.num_partitions = partitions;
                                r.replication_factor = rf;
                            }
                            if ctx.version >= 5 {
                                r.configs = Some(self.created_configs(&configs));
                            }
                            jobs.push((resp.topics.len(), job));
                        }
                    }
                }
            }
            resp.topics.push(r);
        }
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, i| {
            resp.topics[*i].error_code = KafkaError::KafkaStorageError.code();
        });
        Ok(())
    }

    fn created_configs(&self, overrides: &BTreeMap<String, String>) -> Vec<CreatableTopicConfigs> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|k| {
                let mut c = CreatableTopicConfigs::default();
                c.name = sb(k.name);
                let (v, source) = match overrides.get(k.name) {
                    Some(v) => (v.clone(), 1),
                    None => (self.config.topic_config_default(k.name).unwrap_or_default(), 5),
                };
                c.value = Some(sb(v));
                c.config_source = source;
                c
            })
            .collect()
    }

    /// Answers `resp` once every job has finished, each failed job's entry (`at`) marked by
    /// `failed` (KAFKA_STORAGE_ERROR: its change did not become durable).
    pub(super) fn respond_when_done<R, I>(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: &RequestContext,
        mut resp: R,
        jobs: Vec<(I, JobId)>,
        failed: fn(&mut R, &I),
    ) where
        R: kafka_protocol::protocol::Encodable + Send + 'static,
        I: Send + 'static,
    {
        let job_set: BTreeSet<JobId> = jobs.iter().map(|(_, j)| *j).collect();
        let ctx = ctx.clone();
        let build = move |done_badly: &BTreeSet<JobId>| {
            for (at, j) in &jobs {
                if done_badly.contains(j) {
                    failed(&mut resp, at);
                }
            }
            protocol::encode_response(&ctx, &resp)
        };
        self.respond_after(conn, seq, job_set, Box::new(build));
    }

    /// Answers now if nothing is pending, else when every job has finished.
    fn respond_after(&mut self, conn: ConnId, seq: u64, jobs: BTreeSet<JobId>, build: super::BuildResponse) {
        if jobs.is_empty() {
            let frame = build(&BTreeSet::new());
            self.respond_bytes(conn, seq, frame);
        } else {
            self.waiters.push(Waiter { conn, seq, jobs, failed: BTreeSet::new(), then: Then::Respond(build) });
        }
    }

    /// An unclean election is never made: ELECTION_NOT_NEEDED where a leader serves,
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE where none does (one comes from the ISR when a member
    /// is back).
    fn unclean_election_results(&self, targets: Vec<(String, Vec<i32>)>) -> Vec<(String, i32, i16, Option<JobId>)> {
        let mut out = Vec::new();
        for (t, ps) in targets {
            for p in ps {
                let tp = self.topics.get(&t).map(|topic| (topic.id, p));
                let code = match tp.and_then(|tp| self.registration(tp).map(|img| (tp, img))) {
                    None => KafkaError::UnknownTopicOrPartition.code(),
                    Some((tp, _)) if self.partition_leader(tp).is_some() => 84, // ELECTION_NOT_NEEDED
                    Some(_) => 83,                                              // ELIGIBLE_LEADERS_NOT_AVAILABLE
                };
                out.push((t.clone(), p, code, None));
            }
        }
        out
    }

    /// ElectLeaders (KIP-460), on the controller: preferred elections; an unclean one is
    /// never made (a partition with no leader gets one from its ISR as soon as a member is
    /// back), so it is answered ELECTION_NOT_NEEDED or ELIGIBLE_LEADERS_NOT_AVAILABLE.
    pub(super) fn handle_elect_leaders(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
        let req: ElectLeadersRequest = protocol::decode_body(body.clone(), ctx.version)?;
        let mut resp = ElectLeadersResponse::default();
        let wanted: Option<Vec<(String, Vec<i32>)>> =
            req.topic_partitions.map(|ts| ts.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect());
        let named = wanted.iter().flatten().flat_map(|(t, ps)| ps.iter().map(|p| (t.as_str(), *p)));
        if self.is_controller() && self.held_for_pending_change(named, conn, seq, &ctx, &body) {
            return Ok(());
        }
        let results: Vec<(String, i32, i16, Option<JobId>)> = if !self.is_controller() {
            resp.error_code = KafkaError::NotController.code();
            let all = wanted.unwrap_or_default();
            all.into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p, KafkaError::NotController.code(), None)))
                .collect()
        } else if req.election_type == 0 {
            self.elect_preferred(wanted)
        } else {
            self.unclean_election_results(wanted.unwrap_or_default())
        };
        let mut jobs = Vec::new();
        for (topic, partition, code, job) in results {
            let ti = match resp.replica_election_results.iter().position(|r| r.topic.0.as_str() == topic) {
                Some(i) => i,
                None => {
                    let mut r = ReplicaElectionResult::default();
                    r.topic = TopicName(sb(topic.clone()));
                    resp.replica_election_results.push(r);
                    resp.replica_election_results.len() - 1
                }
            };
            let mut pr = PartitionResult::default();
            pr.partition_id = partition;
            pr.error_code = code;
            if code == 80 {
                pr.error_message = Some(sb("the preferred replica is not in sync or not live"));
            }
            let results = &mut resp.replica_election_results[ti].partition_result;
            if let Some(j) = job {
                jobs.push(((ti, results.len()), j));
            }
            results.push(pr);
        }
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, (ti, pi)| {
            resp.replica_election_results[*ti].partition_result[*pi].error_code = KafkaError::KafkaStorageError.code();
        });
        Ok(())
    }

    pub(super) fn handle_delete_topics(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: DeleteTopicsRequest = protocol::decode_body(body, ctx.version)?;
        // Before v6 topics come as a list of names; from v6 as (name or id) entries.
        let targets: Vec<(Option<String>, Uuid)> = if ctx.version >= 6 {
            req.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)).collect()
        } else {
            req.topic_names.iter().map(|n| (Some(n.0.to_string()), Uuid::nil())).collect()
        };
        let mut resp = DeleteTopicsResponse::default();
        let mut jobs = Vec::new();
        for (name, id) in targets {
            let mut r = DeletableTopicResult::default();
            let name = name.or_else(|| self.names.get(id.as_bytes()).cloned());
            r.name = name.clone().map(|n| TopicName(sb(n)));
            match name.as_ref().and_then(|n| self.topics.get(n).map(|t| (n.clone(), t.id, t.creating))) {
                None => {
                    r.error_code =
                        if name.is_none() { KafkaError::UnknownTopicId } else { KafkaError::UnknownTopicOrPartition }
                            .code();
                }
                Some((_, _, Some(_))) => r.error_code = KafkaError::LeaderNotAvailable.code(),
                Some(_) if !self.is_controller() => r.error_code = KafkaError::NotController.code(),
                Some((n, tid, None)) => {
                    if ctx.version >= 6 {
                        r.topic_id = Uuid::from_bytes(tid);
                    }
                    let job = self.new_job(1, JobDone::TopicDeleteDurable { name: n.clone(), id: tid });
                    self.meta_append(&MetaRecord::TopicDeleted { name: n, id: tid }, job);
                    jobs.push((resp.responses.len(), job));
                }
            }
            resp.responses.push(r);
        }
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, i| {
            resp.responses[*i].error_code = KafkaError::KafkaStorageError.code();
        });
        Ok(())
    }

    pub(super) fn handle_create_partitions(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: CreatePartitionsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = CreatePartitionsResponse::default();
        let mut jobs = Vec::new();
        for t in &req.topics {
            let name = t.name.0.to_string();
            let mut r = CreatePartitionsTopicResult::default();
            r.name = t.name.clone();
            let current = self.topics.get(&name).map(|tp| (tp.partitions.len(), tp.creating.is_some(), tp.id));
            let check = match current {
                None => Err((KafkaError::UnknownTopicOrPartition, "no such topic".to_string())),
                Some((_, true, _)) => Err((KafkaError::LeaderNotAvailable, "topic is being created".to_string())),
                Some(_) if !self.is_controller() => {
                    Err((KafkaError::NotController, "this broker is not the active controller".to_string()))
                }
                Some((n, _, _)) if usize::try_from(t.count).map_or(true, |c| c <= n) => {
                    Err((KafkaError::InvalidPartitions, format!("topic has {n} partitions; the count can only grow")))
                }
                Some(_) if t.count > limits::PARTITIONS_PER_TOPIC_MAX => Err((
                    KafkaError::InvalidPartitions,
                    format!("at most {} partitions", limits::PARTITIONS_PER_TOPIC_MAX),
                )),
                Some(_)
                    if t.assignments.as_ref().is_some_and(|a| {
                        let live = self.live_broker_ids();
                        a.iter().any(|a| a.broker_ids.len() != 1 || a.broker_ids.iter().any(|b| !live.contains(&b.0)))
                    }) =>
                {
                    Err((KafkaError::InvalidRequest, "assignment names an unknown broker".to_string()))
                }
                Some((n, _, id)) => Ok((n, id)),
            };
            match check {
                Err((e, msg)) => {
                    r.error_code = e.code();
                    r.error_message = Some(sb(msg));
                }
                Ok(_) if req.validate_only => {}
                Ok((n, id)) => {
                    let assigned: Option<Vec<Vec<i32>>> = t
                        .assignments
                        .as_ref()
                        .map(|a| a.iter().map(|a| a.broker_ids.iter().map(|b| b.0).collect()).collect());
                    let job = self.add_partitions(&name, id, n, usize::try_from(t.count).expect("checked"), assigned);
                    jobs.push((resp.results.len(), job));
                }
            }
            resp.results.push(r);
        }
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, i| {
            resp.results[*i].error_code = KafkaError::KafkaStorageError.code();
        });
        Ok(())
    }

    /// Proposes partitions `from..to` of a topic (placed, or where `assigned` says) and starts
    /// creating this node's; returns the job that finishes when all of it is done.
    fn add_partitions(
        &mut self,
        name: &str,
        id: TopicId,
        from: usize,
        to: usize,
        assigned: Option<Vec<Vec<i32>>>,
    ) -> JobId {
        let rf =
            self.cluster.image.topics.get(name).and_then(|t| t.parts.first()).map_or(1, |p| p.replicas.len().max(1));
        let replicas = assigned.unwrap_or_else(|| self.place_partitions(to - from, from, rf));
        let from = i32::try_from(from).expect("bounded");
        let (job, _) = self.partitions_job(&replicas, 1, JobDone::PartitionsReady { name: name.to_string(), id, from });
        let rec = MetaRecord::PartitionsPlaced { name: name.to_string(), id, from, replicas: replicas.clone() };
        self.meta_append(&rec, job);
        let parts = self.partitions_for(name, from, &replicas, job);
        self.topics.get_mut(name).expect("checked by the caller").partitions.extend(parts);
        job
    }

    /// A job has finished: apply its effect, then wake the requests waiting for it.
    pub(super) fn finish_job(&mut self, id: JobId, job: Job) {
        match job.on_done {
            JobDone::TopicReady { name, id: tid } => self.topic_ready(&name, tid, !job.failed),
            JobDone::PartitionsReady { name, id: tid, from } => self.partitions_ready(&name, tid, from, !job.failed),
            JobDone::TopicDeleteDurable { name, id: tid } if !job.failed => self.remove_topic(&name, tid),
            JobDone::TopicDeleteDurable { .. } => {}
            JobDone::DirsRemoved { name } => {
                self.deleting.remove(&name);
            }
            JobDone::ProducerIds { end } => self.producer_ids_recorded(end, !job.failed),
            JobDone::ProducerIdsFor { broker, end } if !job.failed => {
                let grant = crate::peer::BrokerMessage::ProducerIdsGranted { end };
                self.send_peer(broker, crate::peer::Body::Broker(grant));
            }
            JobDone::ReplicaReady { tp } => self.replica_ready(tp, !job.failed),
            JobDone::ProducerIdsFor { .. } | JobDone::Nothing => {}
        }
        let waiters = std::mem::take(&mut self.waiters);
        for mut w in waiters {
            if w.jobs.remove(&id) && job.failed {
                w.failed.insert(id);
            }
            if !w.jobs.is_empty() {
                self.waiters.push(w);
                continue;
            }
            match w.then {
                Then::Redispatch { ctx, body } => self.dispatch(w.conn, w.seq, ctx, body),
                Then::Respond(build) => {
                    let frame = build(&w.failed);
                    self.respond_bytes(w.conn, w.seq, frame);
                }
            }
        }
    }

    fn topic_ready(&mut self, name: &str, id: TopicId, ok: bool) {
        let Some(t) = self.topics.get_mut(name).filter(|t| t.id == id) else {
            return;
        };
        if ok {
            t.creating = None;
            for p in t.partitions.iter_mut().filter(|p| p.state == PartState::Creating) {
                p.state = PartState::Online;
            }
            tracing::info!(topic = %name, partitions = t.partitions.len(), "topic created");
            self.refresh_topic_roles(name);
        } else if self.cluster.image.topics.get(name).is_some_and(|t| t.id == id) {
            // The topic is committed: it exists in the cluster; its replicas here could not be
            // made, so they are offline here until a restart.
            tracing::error!(topic = %name, "could not create this broker's partitions of a topic; they are offline");
            t.creating = None;
            for p in t.partitions.iter_mut().filter(|p| p.state == PartState::Creating) {
                p.state = PartState::Offline;
            }
        } else {
            tracing::error!(topic = %name, "topic creation failed; rolling back");
            let n = t.partitions.len();
            self.drop_topic_memory(name, id);
            self.remove_dirs(name, 0..i32::try_from(n).expect("bounded"), None);
            // Another topic of the name committed meanwhile (a controller's proposal lost
            // with its leadership, another's taken): its replicas are made now, after the
            // removal of these directories (disk operations complete in issue order).
            self.place_committed_topic(name);
        }
    }

    fn partitions_ready(&mut self, name: &str, id: TopicId, from: i32, ok: bool) {
        let Some(t) = self.topics.get_mut(name).filter(|t| t.id == id) else {
            return;
        };
        let start = usize::try_from(from).expect("non-negative");
        if ok {
            for p in t.partitions.iter_mut().skip(start).filter(|p| p.state == PartState::Creating) {
                p.state = PartState::Online;
            }
            self.refresh_topic_roles(name);
        } else if self.cluster.image.topics.get(name).is_some_and(|i| i.id == id && i.partitions > from) {
            tracing::error!(topic = %name, "could not create this broker's new partitions of a topic; they are offline");
            for p in t.partitions.iter_mut().skip(start).filter(|p| p.state == PartState::Creating) {
                p.state = PartState::Offline;
            }
        } else {
            let n = t.partitions.len();
            t.partitions.truncate(start);
            self.remove_dirs(name, from..i32::try_from(n).expect("bounded"), None);
        }
    }

    /// The deletion is durable: forget the topic, fail what waits on it, remove its files.
    pub(super) fn remove_topic(&mut self, name: &str, id: TopicId) {
        let Some(t) = self.topics.get(name).filter(|t| t.id == id) else {
            return;
        };
        let n = i32::try_from(t.partitions.len()).expect("bounded");
        let files: Vec<_> = t
            .partitions
            .iter()
            .flat_map(|p| p.log.segments.iter().flat_map(|s| [s.log_file, s.index_file, s.time_index_file]))
            .collect();
        self.drop_topic_memory(name, id);
        for file in files {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        let job = self.new_job(usize::try_from(n).expect("bounded"), JobDone::DirsRemoved { name: name.to_string() });
        self.deleting.insert(name.to_string(), job);
        self.remove_dirs(name, 0..n, Some(job));
        self.hw_moved = true; // pending produces on it now fail
        self.forget_topic_offsets(name);
        tracing::info!(topic = %name, "topic deleted");
    }

    fn drop_topic_memory(&mut self, name: &str, id: TopicId) {
        // Its files' handles go with it (the runtime would hold them, and their disk space,
        // for as long as the process lives).
        let files: Vec<_> = self
            .topics
            .get(name)
            .into_iter()
            .flat_map(|t| &t.partitions)
            .flat_map(|p| &p.log.segments)
            .flat_map(|s| [s.log_file, s.index_file, s.time_index_file])
            .collect();
        for file in files {
            self.issue(DiskOp::Close { file }, Purpose::Ignore);
        }
        self.topics.remove(name);
        self.metrics.forget_topic(name);
        self.names.remove(&id);
        self.dirty.retain(|tp| tp.0 != id);
    }

    fn remove_dirs(&mut self, name: &str, partitions: std::ops::Range<i32>, job: Option<JobId>) {
        for p in partitions {
            let purpose = job.map_or(Purpose::Ignore, Purpose::Job);
            self.issue(DiskOp::RemoveDirAll { path: metadata::partition_dir(name, p) }, purpose);
        }
    }
}

fn config_entry(
    version: i16,
    name: &str,
    value: &str,
    source: i8,
    config_type: i8,
    doc: &str,
    with_doc: bool,
) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = sb(name);
    c.value = Some(sb(value));
    c.config_source = source;
    c.read_only = false;
    c.is_sensitive = false;
    if version >= 3 {
        c.config_type = config_type;
        if with_doc && !doc.is_empty() {
            c.documentation = Some(sb(doc));
        }
    }
    c
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    let mut s = DescribeConfigsSynonym::default();
    s.name = sb(name);
    s.value = Some(sb(value));
    s.source = source;
    s
}

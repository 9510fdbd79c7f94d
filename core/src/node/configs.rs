//! AlterConfigs and IncrementalAlterConfigs: a topic's configs changed at runtime.
//!
//! The active controller checks the change against the topic's current overrides and records
//! it in the metadata log (`MetaRecord::TopicConfigsAltered`); every node applies it in log
//! order, so the change takes effect everywhere (retention, segment rolling, message size,
//! `min.insync.replicas` read the topic's settings when they act) and survives restarts. The
//! request is answered once the record is committed.
//!
//! Broker properties marked dynamic (`properties::Property::dynamic`) change the same way,
//! per broker or cluster-wide (`MetaRecord::BrokerConfigsAltered`); a change to a static one
//! is refused naming it.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{JobDone, JobId, Node};
use crate::config::{TopicSettings, TOPIC_CONFIG_KEYS};
use crate::metadata::{MetaRecord, ALL_BROKERS};
use crate::properties;
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, FrameError, RequestContext};
use crate::types::ConnId;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// One change to one config (IncrementalAlterConfigs' operations; AlterConfigs sets).
pub(super) enum ConfigOp {
    Set(String, String),
    Delete(String),
    /// Adds an item to a list config (`cleanup.policy`), unless it is there.
    Append(String, String),
    /// Removes an item from a list config.
    Subtract(String, String),
}

type Refusal = (KafkaError, String);

impl Node {
    pub(super) fn handle_alter_configs(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: AlterConfigsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = AlterConfigsResponse::default();
        let mut jobs = Vec::new();
        for r in &req.resources {
            let ops = r
                .configs
                .iter()
                .map(|c| match &c.value {
                    Some(v) => ConfigOp::Set(c.name.to_string(), v.to_string()),
                    None => ConfigOp::Delete(c.name.to_string()),
                })
                .collect();
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
            out.resource_type = r.resource_type;
            out.resource_name = r.resource_name.clone();
            // AlterConfigs replaces the whole set: what it does not name goes back to default.
            let result = self.alter_configs(r.resource_type, &r.resource_name, true, ops, req.validate_only);
            (out.error_code, out.error_message) = settle(result, resp.responses.len(), &mut jobs);
            resp.responses.push(out);
        }
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, i| {
            resp.responses[*i].error_code = KafkaError::NotController.code();
        });
        Ok(())
    }

    pub(super) fn handle_incremental_alter_configs(
        &mut self,
        conn: ConnId,
        seq: u64,
        ctx: RequestContext,
        body: Bytes,
    ) -> Result<(), FrameError> {
        let req: IncrementalAlterConfigsRequest = protocol::decode_body(body, ctx.version)?;
        let mut resp = IncrementalAlterConfigsResponse::default();
        let mut jobs = Vec::new();
        for r in &req.resources {
            let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            out.resource_type = r.resource_type;
            out.resource_name = r.resource_name.clone();
            let ops: Result<Vec<ConfigOp>, Refusal> = r
                .configs
                .iter()
                .map(|c| {
                    let name = c.name.to_string();
                    let value = c.value.as_ref().map(|v| v.to_string());
                    match (c.config_operation, value) {
                        (1, _) => Ok(ConfigOp::Delete(name)),
                        (0, Some(v)) => Ok(ConfigOp::Set(name, v)),
                        (2, Some(v)) => Ok(ConfigOp::Append(name, v)),
                        (3, Some(v)) => Ok(ConfigOp::Subtract(name, v)),
                        (0..=3, None) => Err((KafkaError::InvalidRequest, format!("{name}: no value given"))),
                        (op, _) => Err((KafkaError::InvalidRequest, format!("{name}: unknown operation {op}"))),
                    }
                })
                .collect();
            let result = ops
                .and_then(|ops| self.alter_configs(r.resource_type, &r.resource_name, false, ops, req.validate_only));
            (out.error_code, out.error_message) = settle(result, resp.responses.len(), &mut jobs);
            resp.responses.push(out);
        }
        self.respond_when_done(conn, seq, &ctx, resp, jobs, |resp, i| {
            resp.responses[*i].error_code = KafkaError::NotController.code();
        });
        Ok(())
    }

    /// Checks one resource's change and, unless only validating, records it. Returns the job
    /// that finishes when the record is committed (None when nothing is recorded).
    fn alter_configs(
        &mut self,
        resource_type: i8,
        name: &str,
        replace: bool,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<Option<JobId>, Refusal> {
        match resource_type {
            TOPIC => self.alter_topic_configs(name, replace, ops, validate_only),
            BROKER => self.alter_broker_configs(name, replace, ops, validate_only),
            other => Err((KafkaError::InvalidRequest, format!("resource type {other} cannot be altered"))),
        }
    }

    fn alter_topic_configs(
        &mut self,
        name: &str,
        replace: bool,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<Option<JobId>, Refusal> {
        let Some(t) = self.topics.get(name) else {
            return Err((KafkaError::UnknownTopicOrPartition, format!("no topic {name:?}")));
        };
        if !self.is_controller() {
            return Err((KafkaError::NotController, "this broker is not the active controller".into()));
        }
        let id = t.id;
        let mut configs = if replace { BTreeMap::new() } else { t.configs.clone() };
        let (set, deleted) = apply_ops(&mut configs, ops, |key, value| {
            let Some(spec) = TOPIC_CONFIG_KEYS.iter().find(|k| k.name == key) else {
                return Err((KafkaError::InvalidConfig, format!("unknown topic config {key:?}")));
            };
            let current = value.cloned().or_else(|| self.config.topic_config_default(key));
            Ok((spec.config_type == 7, current.unwrap_or_default()))
        })?;
        TopicSettings::resolve(&self.config, &configs).map_err(|e| (KafkaError::InvalidConfig, format!("{e:?}")))?;
        Ok(self.record_config_change(MetaRecord::TopicConfigsAltered { id, replace, set, deleted }, validate_only))
    }

    /// Appends a checked change to the metadata log, unless only validating; returns the job
    /// that finishes when it is committed.
    fn record_config_change(&mut self, rec: MetaRecord, validate_only: bool) -> Option<JobId> {
        if validate_only {
            return None;
        }
        let job = self.new_job(1, JobDone::Nothing);
        self.meta_append(&rec, job);
        if crate::mutants::active(crate::mutants::Mutant::AckConfigBeforeCommit) {
            return None; // answered now, committed or not
        }
        Some(job)
    }

    /// A broker's dynamic configs (`name` a broker id, or empty for the cluster-wide default):
    /// only properties marked dynamic, each value checked as start-up checks it.
    fn alter_broker_configs(
        &mut self,
        name: &str,
        replace: bool,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<Option<JobId>, Refusal> {
        let broker = if name.is_empty() {
            ALL_BROKERS
        } else {
            name.parse::<i32>()
                .ok()
                .filter(|b| *b >= 0)
                .ok_or_else(|| (KafkaError::InvalidRequest, format!("{name:?} is not a broker id")))?
        };
        let static_only: Vec<&str> =
            ops.iter().map(ConfigOp::name).filter(|k| properties::find(k).is_some_and(|p| !p.dynamic)).collect();
        if !static_only.is_empty() {
            return Err((
                KafkaError::InvalidRequest,
                format!(
                    "cannot update these configs dynamically: {} (set them in server.properties and restart)",
                    static_only.join(", ")
                ),
            ));
        }
        let mut configs = if replace {
            BTreeMap::new()
        } else {
            self.cluster.image.broker_configs.get(&broker).cloned().unwrap_or_default()
        };
        let (set, deleted) = apply_ops(&mut configs, ops, |key, value| {
            let Some(p) = properties::find(key) else {
                return Err((KafkaError::InvalidConfig, format!("unknown broker config {key:?}")));
            };
            Ok((p.kind == properties::Kind::List, value.cloned().unwrap_or_else(|| (p.default)(&self.config))))
        })?;
        // Each value is checked by the setter start-up uses.
        if let Some(e) = properties::apply_dynamic(&configs, &mut self.config.clone()).pop() {
            return Err((KafkaError::InvalidConfig, e));
        }
        if !self.is_controller() {
            return Err((KafkaError::NotController, "this broker is not the active controller".into()));
        }
        Ok(self.record_config_change(MetaRecord::BrokerConfigsAltered { broker, replace, set, deleted }, validate_only))
    }

    /// A committed change of dynamic broker configs: when it concerns this broker (its own or
    /// the cluster-wide default), its configuration is its static one with the default's and
    /// then its own dynamic configs on top (Kafka's order of precedence), and every topic's
    /// settings follow.
    pub(super) fn broker_configs_altered(&mut self, broker: i32) {
        if broker != ALL_BROKERS && broker != self.me() {
            return;
        }
        let mut config = self.static_config.clone();
        for scope in [ALL_BROKERS, self.me()] {
            let Some(configs) = self.cluster.image.broker_configs.get(&scope) else { continue };
            for e in properties::apply_dynamic(configs, &mut config) {
                tracing::error!(broker = scope, error = %e, "a committed broker config is not valid here; left out");
            }
        }
        self.config = config;
        tracing::info!(broker, "dynamic broker configs changed");
        for (name, t) in &mut self.topics {
            match TopicSettings::resolve(&self.config, &t.configs) {
                Ok(settings) => t.settings = settings,
                Err(e) => tracing::error!(topic = %name, error = ?e, "topic settings no longer resolve; kept the old"),
            }
        }
    }

    /// A committed change of a topic's configs: the image has the new set; the topic's
    /// settings follow it.
    pub(super) fn topic_configs_altered(&mut self, id: [u8; 16]) {
        let Some(name) = self.names.get(&id).cloned() else { return };
        let Some(image) = self.cluster.image.topics.get(&name).filter(|t| t.id == id) else { return };
        let configs = image.configs.clone();
        let Some(t) = self.topics.get_mut(&name).filter(|t| t.id == id) else { return };
        match TopicSettings::resolve(&self.config, &configs) {
            Ok(settings) => {
                tracing::info!(topic = %name, ?configs, "topic configs changed");
                t.settings = settings;
                t.configs = configs;
            }
            Err(e) => {
                tracing::error!(topic = %name, error = ?e, "a committed topic config is not valid here; kept the old")
            }
        }
    }
}

/// Applies `ops` to `configs` in order; returns what ends up set and what deleted. `spec`
/// gives a key's kind (a list or not) and its value now (from its value in `configs`, if
/// any), or refuses the key.
fn apply_ops(
    configs: &mut BTreeMap<String, String>,
    ops: Vec<ConfigOp>,
    spec: impl Fn(&str, Option<&String>) -> Result<(bool, String), Refusal>,
) -> Result<(Vec<(String, String)>, Vec<String>), Refusal> {
    let mut set: Vec<(String, String)> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    for op in ops {
        let key = op.name().to_string();
        let (is_list, current) = spec(&key, configs.get(&key))?;
        let value = op.apply_to(current, is_list)?;
        set.retain(|(k, _)| *k != key);
        deleted.retain(|d| *d != key);
        match value {
            Some(v) => {
                configs.insert(key.clone(), v.clone());
                set.push((key, v));
            }
            None => {
                configs.remove(&key);
                deleted.push(key);
            }
        }
    }
    Ok((set, deleted))
}

impl ConfigOp {
    fn name(&self) -> &str {
        match self {
            ConfigOp::Set(n, _) | ConfigOp::Delete(n) | ConfigOp::Append(n, _) | ConfigOp::Subtract(n, _) => n,
        }
    }

    /// The config's value after this change (None: back to its default), given its value now.
    fn apply_to(self, current: String, is_list: bool) -> Result<Option<String>, Refusal> {
        Ok(match self {
            ConfigOp::Set(_, v) => Some(v),
            ConfigOp::Delete(_) => None,
            ConfigOp::Append(key, v) | ConfigOp::Subtract(key, v) if !is_list => {
                return Err((KafkaError::InvalidConfig, format!("{key} is not a list: cannot append to it ({v})")));
            }
            ConfigOp::Append(_, v) => {
                let mut items = list(&current);
                for item in list(&v) {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                Some(items.join(","))
            }
            ConfigOp::Subtract(_, v) => {
                let gone = list(&v);
                Some(list(&current).into_iter().filter(|i| !gone.contains(i)).collect::<Vec<_>>().join(","))
            }
        })
    }
}

/// A resource's answer: its error, or none (then, if its change was recorded, the answer
/// waits for the job, noted with the resource's place in the response).
fn settle(
    result: Result<Option<JobId>, Refusal>,
    at: usize,
    jobs: &mut Vec<(usize, JobId)>,
) -> (i16, Option<StrBytes>) {
    match result {
        Ok(job) => {
            jobs.extend(job.map(|j| (at, j)));
            (0, None)
        }
        Err((e, msg)) => (e.code(), Some(StrBytes::from_string(msg))),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

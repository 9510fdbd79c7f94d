//! Admin requests forwarded to the active controller (Kafka's KIP-590, over the peer link):
//! a broker that is not the controller passes CreateTopics, DeleteTopics, CreatePartitions,
//! AlterConfigs, IncrementalAlterConfigs and ElectLeaders on to it, and relays its answer to
//! the client unchanged. Clients that send these to any broker (the Java admin client sends
//! topic config changes to the least loaded one) then work against every node.
//!
//! The controller runs a forwarded request on a connection of its own making (ids from
//! [`FORWARDED_CONN_BASE`] up, never the runtime's), through the same path as a client's, so
//! every rule applies unchanged; the response that path queues goes back over the peer link
//! instead of to a socket. A forward not answered in [`FORWARD_TIMEOUT_MS`] (the controller
//! died or lost its leadership, the link dropped the message) is answered REQUEST_TIMED_OUT,
//! as Kafka does: the change may or may not be made.
//!
//! Not long after, though. A forward carries when it was sent, on the controller's clock as
//! the broker learnt it from heartbeat answers (a lower bound), and the controller refuses
//! one older than [`FORWARD_MAX_AGE_MS`]. Without that, a forward held up on a stalled link
//! (or sent just before its broker stopped, and the client retried elsewhere) could arrive
//! many seconds later and undo a change acknowledged since (cluster seed 5513). A broker
//! with no reading of the controller's clock, or a refused forward, handles the request
//! itself: NOT_CONTROLLER, which is true, since nothing was done.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::Node;
use crate::io::Part;
use crate::peer::{BrokerMessage, ControllerClock};
use crate::protocol::errors::KafkaError;
use crate::protocol::{self, RequestContext};
use crate::types::ConnId;
use crate::Instant;

/// Connection ids of forwarded requests start here; the runtimes number theirs from 0.
pub const FORWARDED_CONN_BASE: u64 = 1 << 62;

/// How long a broker waits for the controller's answer to a forwarded request.
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;

/// The oldest forward a controller still runs, by the sender's clock reading: well inside the
/// broker's timeout, so a request is never started after its client was told it timed out.
pub const FORWARD_MAX_AGE_MS: u64 = FORWARD_TIMEOUT_MS / 2;

/// A request this broker forwarded, waiting for the controller's answer.
struct Outbound {
    conn: ConnId,
    seq: u64,
    ctx: RequestContext,
    body: Bytes,
    deadline: Instant,
}

#[derive(Default)]
pub(super) struct Forwarding {
    next_id: u64,
    out: BTreeMap<u64, Outbound>,
    next_conn: u64,
    /// Requests other brokers forwarded here, by the connection they run on: the broker and
    /// its id for the request.
    inbound: BTreeMap<ConnId, (i32, u64)>,
}

/// The requests only the controller can carry out.
fn forwardable(key: ApiKey) -> bool {
    matches!(
        key,
        ApiKey::CreateTopics
            | ApiKey::DeleteTopics
            | ApiKey::CreatePartitions
            | ApiKey::AlterConfigs
            | ApiKey::IncrementalAlterConfigs
            | ApiKey::ElectLeaders
            | ApiKey::AlterPartitionReassignments
    )
}

fn request_frame(ctx: &RequestContext, body: &Bytes) -> Result<Vec<u8>, String> {
    let mut header = RequestHeader::default();
    header.request_api_key = ctx.api_key as i16;
    header.request_api_version = ctx.version;
    header.correlation_id = ctx.correlation_id;
    header.client_id = ctx.client_id.clone().map(StrBytes::from_string);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, ctx.api_key.request_header_version(ctx.version)).map_err(|e| e.to_string())?;
    buf.extend_from_slice(body);
    Ok(buf.to_vec())
}

impl Node {
    /// Sends a client's request to the active controller if it is one for the controller and
    /// this broker is not it. Returns false when it is to be handled here.
    pub(super) fn forward(&mut self, conn: ConnId, seq: u64, ctx: &RequestContext, body: &Bytes) -> bool {
        if !forwardable(ctx.api_key) || is_forwarded(conn) || !self.config.is_cluster() || self.is_controller() {
            return false;
        }
        let Some(controller) = self.controller().filter(|c| *c != self.me()) else { return false };
        let Some(clock) = self.controller_clock_now(controller) else {
            tracing::debug!(controller, "no heartbeat answer from the controller yet; not forwarded");
            return false;
        };
        let frame = match request_frame(ctx, body) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "a request header could not be encoded again; handled here");
                return false;
            }
        };
        if self.forwarding.next_id == 0 {
            // Ids start at a random point, so an answer meant for this broker's previous
            // process (sent before it restarted) does not match a request of this one.
            self.forwarding.next_id = rand::RngCore::next_u64(&mut self.rng) >> 1;
        }
        let f = &mut self.forwarding;
        f.next_id += 1;
        let id = f.next_id;
        let deadline = self.now.mono.plus_millis(FORWARD_TIMEOUT_MS);
        f.out.insert(id, Outbound { conn, seq, ctx: ctx.clone(), body: body.clone(), deadline });
        tracing::debug!(id, controller, api = ?ctx.api_key, "forwarding a request to the controller");
        self.send_peer(controller, crate::peer::Body::Broker(BrokerMessage::Forward { id, frame, clock }));
        true
    }

    /// The controller's side: runs a request another broker forwarded, unless it was sent too
    /// long ago (or under another controller, whose clock this is not).
    pub(super) fn on_forward(&mut self, from: i32, id: u64, frame: Vec<u8>, clock: ControllerClock) {
        let now = self.now.mono.0;
        let epoch = self.meta.quorum.as_ref().filter(|_| self.is_controller()).map(|q| q.epoch());
        let age_ms = now.checked_sub(clock.at).map(|ns| ns / 1_000_000);
        if epoch != Some(clock.epoch) || age_ms.is_none_or(|a| a > FORWARD_MAX_AGE_MS) {
            tracing::info!(
                from,
                id,
                ?age_ms,
                ?epoch,
                sent_in = clock.epoch,
                "a forwarded request refused: too old, or not for this controller"
            );
            return self.forwarded_closed_on(from, id);
        }
        let conn = ConnId(FORWARDED_CONN_BASE + self.forwarding.next_conn);
        self.forwarding.next_conn += 1;
        self.forwarding.inbound.insert(conn, (from, id));
        self.on_frame(conn, Bytes::from(frame));
    }

    /// A response queued on a forwarded request's connection: back to the broker it came
    /// from. The connection served that one request.
    pub(super) fn forwarded_response(&mut self, conn: ConnId, parts: Vec<Part>) {
        let Some((to, id)) = self.forwarding.inbound.remove(&conn) else { return };
        self.conns.remove(&conn);
        self.metrics.connection_closed(conn);
        let mut frame = Vec::new();
        for p in parts {
            match p {
                Part::Bytes(b) => frame.extend_from_slice(&b),
                Part::File { .. } => return self.forwarded_closed_on(to, id),
            }
        }
        self.send_peer(to, crate::peer::Body::Broker(BrokerMessage::Forwarded { id, frame: Some(frame) }));
    }

    /// A forwarded request's connection was closed here (a malformed request, a node failed
    /// at start-up): the broker handles the request itself.
    pub(super) fn forwarded_closed(&mut self, conn: ConnId) {
        if let Some((to, id)) = self.forwarding.inbound.remove(&conn) {
            self.conns.remove(&conn);
            self.metrics.connection_closed(conn);
            self.forwarded_closed_on(to, id);
        }
    }

    fn forwarded_closed_on(&mut self, to: i32, id: u64) {
        self.send_peer(to, crate::peer::Body::Broker(BrokerMessage::Forwarded { id, frame: None }));
    }

    /// The broker's side: the controller's answer, relayed to the client as it is (it carries
    /// the client's correlation id), or, when there is none, the request handled here.
    pub(super) fn on_forwarded(&mut self, id: u64, frame: Option<Vec<u8>>) {
        let Some(o) = self.forwarding.out.remove(&id) else { return };
        // The answer to the request sent: after its length comes the client's correlation id.
        let matches = |f: &[u8]| f.get(4..8) == Some(&o.ctx.correlation_id.to_be_bytes()[..]);
        match frame {
            Some(f) if matches(&f) => self.respond_bytes(o.conn, o.seq, Ok(Bytes::from(f))),
            Some(_) => {
                tracing::warn!(id, "a forwarded request's answer is not for it; handled here");
                self.dispatch_here(o.conn, o.seq, o.ctx, o.body)
            }
            None => self.dispatch_here(o.conn, o.seq, o.ctx, o.body),
        }
    }

    /// Forwards unanswered for too long are answered REQUEST_TIMED_OUT.
    pub(super) fn forward_timeouts(&mut self) {
        let now = self.now.mono;
        let late: Vec<u64> = self.forwarding.out.iter().filter(|(_, o)| o.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            tracing::info!(id, "the controller did not answer a forwarded request in time");
            let Some(o) = self.forwarding.out.remove(&id) else { continue };
            match timed_out_response(&o.ctx, o.body.clone()) {
                Ok(resp) => self.respond_bytes(o.conn, o.seq, Ok(resp)),
                Err(e) => {
                    tracing::error!(error = %e, "a timed-out request's answer could not be built; handled here");
                    self.dispatch_here(o.conn, o.seq, o.ctx, o.body)
                }
            }
        }
    }

    pub(super) fn forward_poll_timeout(&self) -> Option<Instant> {
        self.forwarding.out.values().map(|o| o.deadline).min()
    }

    /// A client connection closed: its forwarded requests need no answer.
    pub(super) fn forwards_of_closed(&mut self, conn: ConnId) {
        self.forwarding.out.retain(|_, o| o.conn != conn);
    }
}

/// Whether a connection is one a forwarded request runs on.
pub(super) fn is_forwarded(conn: ConnId) -> bool {
    conn.0 >= FORWARDED_CONN_BASE
}

/// The answer to a forwardable request that timed out: REQUEST_TIMED_OUT for each thing it
/// names (topic, resource, partition), as Kafka's broker answers a forward that timed out.
fn timed_out_response(ctx: &RequestContext, body: Bytes) -> Result<Bytes, String> {
    match ctx.api_key {
        ApiKey::CreateTopics | ApiKey::DeleteTopics | ApiKey::CreatePartitions => timed_out_topics(ctx, body),
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => timed_out_configs(ctx, body),
        ApiKey::ElectLeaders | ApiKey::AlterPartitionReassignments => timed_out_partitions(ctx, body),
        other => Err(format!("{other:?} is not forwarded")),
    }
}

const TIMED_OUT: i16 = KafkaError::RequestTimedOut.code();

fn bad(e: crate::protocol::FrameError) -> String {
    format!("{e:?}")
}

fn timed_out_topics(ctx: &RequestContext, body: Bytes) -> Result<Bytes, String> {
    use kafka_protocol::messages::*;
    let v = ctx.version;
    if ctx.api_key == ApiKey::CreateTopics {
        let req: CreateTopicsRequest = protocol::decode_body(body, v).map_err(bad)?;
        let mut resp = CreateTopicsResponse::default();
        for t in req.topics {
            let mut r = create_topics_response::CreatableTopicResult::default();
            (r.name, r.error_code) = (t.name, TIMED_OUT);
            resp.topics.push(r);
        }
        protocol::encode_response(ctx, &resp)
    } else if ctx.api_key == ApiKey::DeleteTopics {
        let req: DeleteTopicsRequest = protocol::decode_body(body, v).map_err(bad)?;
        let mut resp = DeleteTopicsResponse::default();
        let named = req.topic_names.into_iter().map(|n| (Some(n), Default::default()));
        for (name, topic_id) in named.chain(req.topics.into_iter().map(|t| (t.name, t.topic_id))) {
            let mut r = delete_topics_response::DeletableTopicResult::default();
            (r.name, r.topic_id, r.error_code) = (name, topic_id, TIMED_OUT);
            resp.responses.push(r);
        }
        protocol::encode_response(ctx, &resp)
    } else {
        let req: CreatePartitionsRequest = protocol::decode_body(body, v).map_err(bad)?;
        let mut resp = CreatePartitionsResponse::default();
        for t in req.topics {
            let mut r = create_partitions_response::CreatePartitionsTopicResult::default();
            (r.name, r.error_code) = (t.name, TIMED_OUT);
            resp.results.push(r);
        }
        protocol::encode_response(ctx, &resp)
    }
}

fn timed_out_configs(ctx: &RequestContext, body: Bytes) -> Result<Bytes, String> {
    use kafka_protocol::messages::*;
    if ctx.api_key == ApiKey::AlterConfigs {
        let req: AlterConfigsRequest = protocol::decode_body(body, ctx.version).map_err(bad)?;
        let mut resp = AlterConfigsResponse::default();
        for t in req.resources {
            let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
            (r.resource_type, r.resource_name, r.error_code) = (t.resource_type, t.resource_name, TIMED_OUT);
            resp.responses.push(r);
        }
        protocol::encode_response(ctx, &resp)
    } else {
        let req: IncrementalAlterConfigsRequest = protocol::decode_body(body, ctx.version).map_err(bad)?;
        let mut resp = IncrementalAlterConfigsResponse::default();
        for t in req.resources {
            let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            (r.resource_type, r.resource_name, r.error_code) = (t.resource_type, t.resource_name, TIMED_OUT);
            resp.responses.push(r);
        }
        protocol::encode_response(ctx, &resp)
    }
}

fn timed_out_partitions(ctx: &RequestContext, body: Bytes) -> Result<Bytes, String> {
    use kafka_protocol::messages::*;
    if ctx.api_key == ApiKey::AlterPartitionReassignments {
        let mut resp = AlterPartitionReassignmentsResponse::default();
        resp.error_code = TIMED_OUT;
        return protocol::encode_response(ctx, &resp);
    }
    let req: ElectLeadersRequest = protocol::decode_body(body, ctx.version).map_err(bad)?;
    let mut resp = ElectLeadersResponse::default();
    if ctx.version >= 1 {
        resp.error_code = TIMED_OUT; // not in version 0
    }
    for t in req.topic_partitions.unwrap_or_default() {
        let mut r = elect_leaders_response::ReplicaElectionResult::default();
        r.topic = t.topic;
        for p in t.partitions {
            let mut pr = elect_leaders_response::PartitionResult::default();
            (pr.partition_id, pr.error_code) = (p, TIMED_OUT);
            r.partition_result.push(pr);
        }
        resp.replica_election_results.push(r);
    }
    protocol::encode_response(ctx, &resp)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;

    fn answer<Req: Encodable, Resp: Decodable>(
        key: ApiKey,
        req: impl Fn(i16) -> Req,
        codes: impl Fn(&Resp) -> Vec<i16>,
    ) {
        let (lo, hi) = protocol::supported_range(key).expect("supported");
        for version in lo..=hi {
            let mut body = BytesMut::new();
            req(version).encode(&mut body, version).unwrap();
            let ctx = RequestContext { api_key: key, version, correlation_id: 9, client_id: None };
            let mut frame = timed_out_response(&ctx, body.freeze()).unwrap();
            let header = key.response_header_version(version);
            let _len = bytes::Buf::get_i32(&mut frame);
            assert_eq!(bytes::Buf::get_i32(&mut frame), 9);
            if header >= 1 {
                bytes::Buf::advance(&mut frame, 1); // no tagged fields
            }
            let resp = Resp::decode(&mut frame, version).unwrap();
            let got = codes(&resp);
            assert!(!got.is_empty() && got.iter().all(|c| *c == 7), "{key:?} v{version}: {got:?}");
        }
    }

    fn name(s: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(s))
    }

    /// Every forwarded request's timeout is answered REQUEST_TIMED_OUT for each thing it
    /// names, in every version the broker takes.
    #[test]
    fn a_timed_out_forward_is_answered_request_timed_out_in_every_version() {
        let mut ct = CreateTopicsRequest::default();
        ct.topics = vec![create_topics_request::CreatableTopic::default().with_name(name("t"))];
        answer(
            ApiKey::CreateTopics,
            |_| ct.clone(),
            |r: &CreateTopicsResponse| r.topics.iter().map(|t| t.error_code).collect(),
        );
        // Names before version 6, (name or id) entries from it.
        let dt = |v: i16| {
            let mut dt = DeleteTopicsRequest::default();
            if v < 6 {
                dt.topic_names = vec![name("t")];
            } else {
                dt.topics = vec![delete_topics_request::DeleteTopicState::default().with_name(Some(name("t")))];
            }
            dt
        };
        answer(ApiKey::DeleteTopics, dt, |r: &DeleteTopicsResponse| r.responses.iter().map(|t| t.error_code).collect());
        let mut cp = CreatePartitionsRequest::default();
        cp.topics = vec![create_partitions_request::CreatePartitionsTopic::default().with_name(name("t"))];
        answer(
            ApiKey::CreatePartitions,
            |_| cp.clone(),
            |r: &CreatePartitionsResponse| r.results.iter().map(|t| t.error_code).collect(),
        );
        let mut ac = AlterConfigsRequest::default();
        ac.resources = vec![alter_configs_request::AlterConfigsResource::default()];
        answer(
            ApiKey::AlterConfigs,
            |_| ac.clone(),
            |r: &AlterConfigsResponse| r.responses.iter().map(|t| t.error_code).collect(),
        );
        let mut iac = IncrementalAlterConfigsRequest::default();
        iac.resources = vec![incremental_alter_configs_request::AlterConfigsResource::default()];
        answer(
            ApiKey::IncrementalAlterConfigs,
            |_| iac.clone(),
            |r: &IncrementalAlterConfigsResponse| r.responses.iter().map(|t| t.error_code).collect(),
        );
        let mut el = ElectLeadersRequest::default();
        el.topic_partitions = Some(vec![elect_leaders_request::TopicPartitions::default()
            .with_topic(name("t"))
            .with_partitions(vec![0])]);
        answer(
            ApiKey::ElectLeaders,
            |_| el.clone(),
            |r: &ElectLeadersResponse| {
                r.replica_election_results.iter().flat_map(|t| &t.partition_result).map(|p| p.error_code).collect()
            },
        );
        answer(
            ApiKey::AlterPartitionReassignments,
            |_| AlterPartitionReassignmentsRequest::default(),
            |r: &AlterPartitionReassignmentsResponse| vec![r.error_code],
        );
    }
}

//! Kafka error codes. Core's modules have their own error types; they become Kafka codes
//! only here, at the protocol edge, through one exhaustive match.

use crate::config::ConfigError;
use crate::log::batch::BatchError;

/// The Kafka errors Sluice answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaError {
    OffsetOutOfRange,
    CorruptMessage,
    UnknownTopicOrPartition,
    LeaderNotAvailable,
    NotLeaderOrFollower,
    NotController,
    MessageTooLarge,
    InvalidTopic,
    InvalidRequiredAcks,
    InvalidTimestamp,
    UnsupportedVersion,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    InvalidConfig,
    InvalidRequest,
    UnsupportedForMessageFormat,
    PolicyViolation,
    KafkaStorageError,
    InvalidRecord,
    UnknownTopicId,
    TransactionalIdAuthorizationFailed,
    CoordinatorLoadInProgress,
    NotEnoughReplicas,
    NotEnoughReplicasAfterAppend,
    RequestTimedOut,
    FencedLeaderEpoch,
    UnknownLeaderEpoch,
    /// 78: a new leader's high watermark is still below the start of its epoch, so the
    /// offset asked for may be lower than the last leader answered (KIP-207); retriable.
    OffsetNotAvailable,
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    InvalidTxnState,
    /// Transactional batches of more than one producer (id and epoch) in one request.
    InvalidProducerIdMapping,
    /// A transaction marker from a coordinator another has since replaced (its epoch older
    /// than the last marker's for that producer on the partition).
    TransactionCoordinatorFenced,
    /// 120: the transaction must be aborted, and the producer may go on (KIP-890): a
    /// transactional write or offset commit its transaction does not hold. Answered to the
    /// versions that know it (Produce v11+, TxnOffsetCommit v4+); older ones get
    /// INVALID_TXN_STATE (`KafkaError::for_version`).
    TransactionAbortable,
    UnknownServerError,
}

/// PRODUCER_FENCED (90) as a client of an older version is told it: INVALID_PRODUCER_EPOCH
/// (47), as Kafka answers EndTxn, AddPartitionsToTxn and AddOffsetsToTxn before v2 and
/// InitProducerId before v4. Those clients do not know 90 (kafkajs reports "unknown error
/// code 90" instead of its fencing error).
pub fn fenced_for_version(key: kafka_protocol::messages::ApiKey, version: i16, code: i16) -> i16 {
    use kafka_protocol::messages::ApiKey;
    let knows_fenced = match key {
        ApiKey::InitProducerId => version >= 4,
        ApiKey::EndTxn | ApiKey::AddPartitionsToTxn | ApiKey::AddOffsetsToTxn => version >= 2,
        _ => true,
    };
    if code == 90 && !knows_fenced {
        47
    } else {
        code
    }
}

impl KafkaError {
    /// This error as a client of a version without TRANSACTION_ABORTABLE (Produce before
    /// v11, TxnOffsetCommit before v4) is answered: INVALID_TXN_STATE, as Kafka does.
    pub fn for_version(self, knows_abortable: bool) -> KafkaError {
        match self {
            KafkaError::TransactionAbortable if !knows_abortable => KafkaError::InvalidTxnState,
            e => e,
        }
    }

    pub const fn code(self) -> i16 {
        match self {
            KafkaError::OffsetOutOfRange => 1,
            KafkaError::CorruptMessage => 2,
            KafkaError::UnknownTopicOrPartition => 3,
            KafkaError::LeaderNotAvailable => 5,
            KafkaError::NotLeaderOrFollower => 6,
            KafkaError::NotController => 41,
            KafkaError::MessageTooLarge => 10,
            KafkaError::InvalidTopic => 17,
            KafkaError::InvalidRequiredAcks => 21,
            KafkaError::InvalidTimestamp => 32,
            KafkaError::UnsupportedVersion => 35,
            KafkaError::TopicAlreadyExists => 36,
            KafkaError::InvalidPartitions => 37,
            KafkaError::InvalidReplicationFactor => 38,
            KafkaError::InvalidReplicaAssignment => 39,
            KafkaError::InvalidConfig => 40,
            KafkaError::InvalidRequest => 42,
            KafkaError::UnsupportedForMessageFormat => 43,
            KafkaError::PolicyViolation => 44,
            KafkaError::CoordinatorLoadInProgress => 14,
            KafkaError::NotEnoughReplicas => 19,
            KafkaError::NotEnoughReplicasAfterAppend => 20,
            KafkaError::RequestTimedOut => 7,
            KafkaError::FencedLeaderEpoch => 74,
            KafkaError::UnknownLeaderEpoch => 75,
            KafkaError::OffsetNotAvailable => 78,
            KafkaError::OutOfOrderSequenceNumber => 45,
            KafkaError::InvalidProducerEpoch => 47,
            KafkaError::InvalidTxnState => 48,
            KafkaError::InvalidProducerIdMapping => 49,
            KafkaError::TransactionCoordinatorFenced => 52,
            KafkaError::TransactionAbortable => 120,
            KafkaError::TransactionalIdAuthorizationFailed => 53,
            KafkaError::KafkaStorageError => 56,
            KafkaError::InvalidRecord => 87,
            KafkaError::UnknownTopicId => 100,
            KafkaError::UnknownServerError => -1,
        }
    }
}

impl From<BatchError> for KafkaError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Truncated | BatchError::BadLength | BatchError::CrcMismatch { .. } => {
                KafkaError::CorruptMessage
            }
            BatchError::UnsupportedMagic(_) => KafkaError::UnsupportedForMessageFormat,
            BatchError::Invalid(_) => KafkaError::InvalidRecord,
            BatchError::TooLarge(_) => KafkaError::MessageTooLarge,
        }
    }
}

impl From<crate::log::producers::SeqError> for KafkaError {
    fn from(e: crate::log::producers::SeqError) -> Self {
        match e {
            crate::log::producers::SeqError::OutOfOrder => KafkaError::OutOfOrderSequenceNumber,
            crate::log::producers::SeqError::InvalidEpoch => KafkaError::InvalidProducerEpoch,
            crate::log::producers::SeqError::CoordinatorFenced => KafkaError::TransactionCoordinatorFenced,
        }
    }
}

impl From<ConfigError> for KafkaError {
    fn from(_: ConfigError) -> Self {
        KafkaError::InvalidConfig
    }
}

pub const NONE: i16 = 0;

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ApiKey;

    use super::*;

    /// Kafka's KIP-588 boundaries: clients of older versions get INVALID_PRODUCER_EPOCH.
    #[test]
    fn producer_fenced_goes_to_the_versions_that_know_it() {
        for (key, first) in [
            (ApiKey::InitProducerId, 4),
            (ApiKey::EndTxn, 2),
            (ApiKey::AddPartitionsToTxn, 2),
            (ApiKey::AddOffsetsToTxn, 2),
        ] {
            assert_eq!(fenced_for_version(key, first - 1, 90), 47, "{key:?} v{}", first - 1);
            assert_eq!(fenced_for_version(key, first, 90), 90, "{key:?} v{first}");
            assert_eq!(fenced_for_version(key, 0, 51), 51, "other errors pass");
        }
        assert_eq!(fenced_for_version(ApiKey::Produce, 3, 90), 90);
    }
}

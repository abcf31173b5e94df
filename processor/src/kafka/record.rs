//! A consumed Kafka message as the rules see it.

use std::sync::Arc;

use hookstream_schemas::topics::headers;
use hookstream_schemas::KafkaHeader;
use rdkafka::message::Headers;
use rdkafka::Message;

use crate::partition::io::Incoming;
use crate::rules::model::{Origin, RawRecord};

/// Copy `m` out of librdkafka's buffer, with its traceparent header.
pub fn incoming<M: Message>(m: &M) -> Incoming {
    let mut hs = Vec::new();
    let mut traceparent = None;
    if let Some(list) = m.headers() {
        for h in list.iter() {
            if h.key == headers::TRACEPARENT {
                traceparent = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
            }
            hs.push(KafkaHeader {
                name: h.key.to_owned(),
                value: h.value.map(<[u8]>::to_vec),
            });
        }
    }
    let record = RawRecord {
        origin: Origin {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        },
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: hs,
    };
    Incoming {
        record: Arc::new(record),
        traceparent,
        held: Default::default(),
    }
}

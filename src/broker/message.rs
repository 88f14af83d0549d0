//! The wire format of a purchase request on the broker, and of the reply to it.
//!
//! Body: JSON `{"request_id": uuid, "item_id": int, "user_id": string, "quantity"?: int}` (see
//! `OrderRequest`; `quantity` absent means 1 and is left out when it is 1).
//! Properties: `content_type = application/json`, `delivery_mode = 2` (persistent),
//! `message_id = request_id`; `reply_to`/`correlation_id` when the producer wants the decision.
//! A message that fails [`decode`] is dead-lettered with the reason in `x-seckill-reason`.
//!
//! Replies are batched: the consumer sends one message per `reply_to` per batch, whose body is a
//! JSON array of outcomes (each names its `request_id`). An API instance publishes every request
//! on one channel, so all its requests share one `reply_to`: a batch of 300 decisions costs the
//! broker one reply instead of 300.

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use crate::domain::{OrderRequest, Outcome};

pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Largest message body accepted; a real request is about 120 bytes.
pub const BODY_LEN_MAX: usize = 4096;
/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-seckill-reason";
/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Properties of a request message. `reply_to` asks the consumer to send the outcome back.
pub fn request_properties(request: &OrderRequest, reply_to: Option<&str>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(2)
        .with_message_id(request.request_id.to_string().into());
    match reply_to {
        Some(queue) => props
            .with_reply_to(queue.into())
            .with_correlation_id(request.request_id.to_string().into()),
        None => props,
    }
}

pub fn encode(request: &OrderRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("an OrderRequest always serialises")
}

/// Why a message cannot be decided (it goes to the dead-letter queue with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// Parses and validates a request message.
pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<OrderRequest, Undecodable> {
    if let Some(content_type) = properties.content_type()
        && content_type.as_str() != CONTENT_TYPE_JSON
    {
        return Err(Undecodable(format!(
            "content type must be {CONTENT_TYPE_JSON}, got {:?}",
            content_type.as_str()
        )));
    }
    if body.len() > BODY_LEN_MAX {
        return Err(Undecodable(format!(
            "body of {} bytes is over the {BODY_LEN_MAX}-byte limit",
            body.len()
        )));
    }
    let request: OrderRequest = serde_json::from_slice(body)
        .map_err(|e| Undecodable(format!("invalid request JSON: {e}")))?;
    request
        .validate()
        .map_err(|e| Undecodable(format!("invalid request: {e}")))?;
    Ok(request)
}

/// Properties of a dead-lettered copy: the original ones plus the reason header.
pub fn dead_letter_properties(original: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    original.clone().with_headers(headers).with_delivery_mode(2)
}

/// A reply body: a JSON array of outcomes, each the same JSON as `GET /orders/{request_id}`.
pub fn encode_replies(outcomes: &[Outcome]) -> Vec<u8> {
    serde_json::to_vec(outcomes).expect("outcomes always serialise")
}

/// Decodes a reply body: an array of outcomes (or a single one, from a simpler consumer).
pub fn decode_replies(body: &[u8]) -> Option<Vec<Outcome>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Body {
        Many(Vec<Outcome>),
        One(Outcome),
    }
    match serde_json::from_slice(body).ok()? {
        Body::Many(outcomes) => Some(outcomes),
        Body::One(outcome) => Some(vec![outcome]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn json_props() -> BasicProperties {
        BasicProperties::default().with_content_type(CONTENT_TYPE_JSON.into())
    }

    #[test]
    fn round_trip() {
        let r = OrderRequest {
            request_id: Uuid::new_v4(),
            item_id: 42,
            user_id: "alice".into(),
            quantity: 1,
        };
        assert_eq!(decode(&json_props(), &encode(&r)), Ok(r.clone()));
        // A producer that sets no content type is accepted too.
        assert_eq!(
            decode(&BasicProperties::default(), &encode(&r)),
            Ok(r.clone())
        );
        // Quantity 1 is left out: the body is what it was before quantities existed.
        assert!(!String::from_utf8(encode(&r)).unwrap().contains("quantity"));
        let three = OrderRequest { quantity: 3, ..r };
        assert!(
            String::from_utf8(encode(&three))
                .unwrap()
                .contains(r#""quantity":3"#)
        );
        assert_eq!(decode(&json_props(), &encode(&three)), Ok(three));
    }

    #[test]
    fn quantity_is_optional_and_at_least_one() {
        let id = "6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f";
        let body = |extra: &str| {
            format!(r#"{{"request_id":"{id}","item_id":1,"user_id":"u"{extra}}}"#).into_bytes()
        };
        assert_eq!(decode(&json_props(), &body("")).unwrap().quantity, 1);
        assert_eq!(
            decode(&json_props(), &body(r#","quantity":1"#))
                .unwrap()
                .quantity,
            1
        );
        assert_eq!(
            decode(&json_props(), &body(r#","quantity":5"#))
                .unwrap()
                .quantity,
            5
        );
        for bad in [r#","quantity":0"#, r#","quantity":-2"#] {
            let err = decode(&json_props(), &body(bad)).unwrap_err();
            assert!(err.0.contains("quantity must be"), "{}", err.0);
        }
        for bad in [
            r#","quantity":"2""#,
            r#","quantity":1.5"#,
            r#","quantity":null"#,
        ] {
            assert!(decode(&json_props(), &body(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_decided() {
        let ok =
            br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":"u"}"#;
        let cases: Vec<(BasicProperties, Vec<u8>, &str)> = vec![
            (json_props(), b"{not json".to_vec(), "invalid request JSON"),
            (json_props(), br#"{"item_id":1,"user_id":"u"}"#.to_vec(), "missing field"),
            (json_props(), br#"{"request_id":"x","item_id":1,"user_id":"u"}"#.to_vec(), "invalid request JSON"),
            (json_props(), br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":"1","user_id":"u"}"#.to_vec(), "invalid type"),
            (json_props(), br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":""}"#.to_vec(), "user_id must be"),
            (json_props(), vec![b' '; BODY_LEN_MAX + 1], "over the"),
            (BasicProperties::default().with_content_type("text/plain".into()), ok.to_vec(), "content type"),
        ];
        for (props, body, expected) in cases {
            let err = decode(&props, &body).expect_err(expected);
            assert!(
                err.0.contains(expected),
                "{:?} should mention {expected:?}",
                err.0
            );
        }
    }

    #[test]
    fn replies_round_trip_batched_or_single() {
        let outcome = Outcome {
            request_id: Uuid::new_v4(),
            status: crate::domain::Status::Purchased,
            order_id: Some(Uuid::new_v4()),
            amount: Some(250),
        };
        let two = [
            outcome,
            Outcome {
                order_id: None,
                amount: None,
                status: crate::domain::Status::SoldOut,
                ..outcome
            },
        ];
        assert_eq!(decode_replies(&encode_replies(&two)), Some(two.to_vec()));
        let single = serde_json::to_vec(&outcome).unwrap();
        assert_eq!(decode_replies(&single), Some(vec![outcome]));
        assert_eq!(decode_replies(b"[{]"), None);
    }

    #[test]
    fn dead_letter_keeps_headers_and_adds_reason() {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert("x-trace".into(), AMQPValue::LongString("t1".into()));
        let props = json_props().with_headers(headers);
        let dl = dead_letter_properties(&props, "bad");
        let h = dl.headers().as_ref().unwrap().inner();
        assert!(h.contains_key("x-trace"));
        assert_eq!(
            h.get(REASON_HEADER),
            Some(&AMQPValue::LongString("bad".into()))
        );
    }
}

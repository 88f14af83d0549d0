//! The wire format of a purchase request on the broker, and of the reply to it.
//!
//! Body: JSON `{"request_id": uuid, "item_id": int, "user_id": string, "quantity"?: int}` (see
//! `OrderRequest`; `quantity` absent means 1 and is left out when it is 1), or a **batch**: a
//! JSON array of such objects, decided in array order. The broker's cost is per message, not per
//! byte, so the API sends the requests of one partition that queue up while its previous message
//! awaits its confirm as one batch (see [`super::publisher`]).
//! Properties: `content_type = application/json`, `delivery_mode = 2` (persistent),
//! `message_id = request_id` for a single request (the API gives a batch an id of its own);
//! `reply_to`/`correlation_id` when the producer wants the decision.
//! A message that fails [`decode`] is dead-lettered with the reason in `x-seckill-reason`; an
//! element of a batch that fails is dead-lettered alone, with its place in the message, and the
//! other elements are decided.
//!
//! Replies are batched: the consumer sends one message per `reply_to` per batch, whose body is a
//! JSON array of outcomes (each names its `request_id`). An API instance publishes every request
//! on one channel, so all its requests share one `reply_to`: a batch of 300 decisions costs the
//! broker one reply instead of 300.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::{OrderRequest, Outcome};

pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Largest body of a single request accepted; a real request is about 120 bytes.
pub const BODY_LEN_MAX: usize = 4096;
/// Most requests one batch message may carry.
pub const BATCH_ELEMENTS_MAX: usize = 1000;
/// Largest body of a batch message accepted.
pub const BATCH_BODY_LEN_MAX: usize = 256 * 1024;
/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-seckill-reason";
/// Headers of a dead-lettered batch element: its place in its message (from 0), and how many
/// elements the message had.
pub const ELEMENT_HEADER: &str = "x-seckill-element";
pub const ELEMENTS_HEADER: &str = "x-seckill-elements";
/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Properties of a message carrying one request. `reply_to` asks the consumer to send the
/// outcome back.
pub fn request_properties(request_id: Uuid, reply_to: Option<&str>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(2)
        .with_message_id(request_id.to_string().into());
    match reply_to {
        Some(queue) => props
            .with_reply_to(queue.into())
            .with_correlation_id(request_id.to_string().into()),
        None => props,
    }
}

/// Properties of a batch message. `reply_to` asks the consumer to send every element's outcome
/// back (the API sets it when any element's client waits for its decision).
pub fn batch_properties(reply_to: Option<&str>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(2);
    match reply_to {
        Some(queue) => props.with_reply_to(queue.into()),
        None => props,
    }
}

pub fn encode(request: &OrderRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("an OrderRequest always serialises")
}

/// A batch body from requests already [`encode`]d, in decision order.
pub fn encode_batch<'a>(encoded: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (index, request) in encoded.into_iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(request);
    }
    body.push(b']');
    body
}

/// Why a message cannot be decided (it goes to the dead-letter queue with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// A message's requests, as far as they could be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message carrying one request.
    One(OrderRequest),
    /// A batch: each element in order, decoded, or refused with its own body and reason.
    Batch(Vec<Result<OrderRequest, Refused>>),
}

/// A batch element that cannot be decided: its body (as it was in the message) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub body: Vec<u8>,
    pub reason: Undecodable,
}

/// Parses and validates a request message: one request, or a batch. The whole message is
/// refused when its properties, its size or its array are wrong; a batch whose array is sound
/// refuses only its bad elements.
pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Decoded, Undecodable> {
    if let Some(content_type) = properties.content_type()
        && content_type.as_str() != CONTENT_TYPE_JSON
    {
        return Err(Undecodable(format!(
            "content type must be {CONTENT_TYPE_JSON}, got {:?}",
            content_type.as_str()
        )));
    }
    if is_batch(body) {
        decode_batch(body).map(Decoded::Batch)
    } else if body.len() > BODY_LEN_MAX {
        Err(Undecodable(format!(
            "body of {} bytes is over the {BODY_LEN_MAX}-byte limit",
            body.len()
        )))
    } else {
        decode_request(body).map(Decoded::One)
    }
}

/// A batch body is a JSON array: its first byte that is not white space is `[`.
fn is_batch(body: &[u8]) -> bool {
    first_byte(body) == Some(b'[')
}

fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn decode_batch(body: &[u8]) -> Result<Vec<Result<OrderRequest, Refused>>, Undecodable> {
    if body.len() > BATCH_BODY_LEN_MAX {
        return Err(Undecodable(format!(
            "batch body of {} bytes is over the {BATCH_BODY_LEN_MAX}-byte limit",
            body.len()
        )));
    }
    let elements: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| Undecodable(format!("invalid batch JSON: {e}")))?;
    if elements.is_empty() || elements.len() > BATCH_ELEMENTS_MAX {
        return Err(Undecodable(format!(
            "a batch holds 1 to {BATCH_ELEMENTS_MAX} requests, this one {}",
            elements.len()
        )));
    }
    let decoded = elements.into_iter().map(|element| {
        let body = element.get().as_bytes();
        let decoded = if body.len() > BODY_LEN_MAX {
            Err(Undecodable(format!(
                "element of {} bytes is over the {BODY_LEN_MAX}-byte limit of a request",
                body.len()
            )))
        } else {
            decode_request(body)
        };
        decoded.map_err(|reason| Refused {
            body: body.to_vec(),
            reason,
        })
    });
    Ok(decoded.collect())
}

/// Parses and validates one request object (only an object: serde would also take the fields
/// as an array, in order).
fn decode_request(body: &[u8]) -> Result<OrderRequest, Undecodable> {
    if first_byte(body) != Some(b'{') {
        return Err(Undecodable(
            "invalid request JSON: a request is a JSON object".into(),
        ));
    }
    let request: OrderRequest = serde_json::from_slice(body)
        .map_err(|e| Undecodable(format!("invalid request JSON: {e}")))?;
    request
        .validate()
        .map_err(|e| Undecodable(format!("invalid request: {e}")))?;
    Ok(request)
}

/// Where a refused request was in its message: a batch element names its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElementOf {
    pub index: usize,
    pub elements: usize,
}

/// Properties of a dead-lettered copy: the original ones plus the reason header, and for a batch
/// element its place in the message.
pub fn dead_letter_properties(
    original: &BasicProperties,
    reason: &str,
    element: Option<ElementOf>,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    if let Some(place) = element {
        let count = |n: usize| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        headers.insert(ELEMENT_HEADER.into(), count(place.index));
        headers.insert(ELEMENTS_HEADER.into(), count(place.elements));
    }
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

    fn json_props() -> BasicProperties {
        BasicProperties::default().with_content_type(CONTENT_TYPE_JSON.into())
    }

    /// The one request of a single-request message.
    fn decode_one(props: &BasicProperties, body: &[u8]) -> Result<OrderRequest, Undecodable> {
        match decode(props, body)? {
            Decoded::One(request) => Ok(request),
            Decoded::Batch(elements) => panic!("a single body decoded as a batch: {elements:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let r = OrderRequest {
            request_id: Uuid::new_v4(),
            item_id: 42,
            user_id: "alice".into(),
            quantity: 1,
        };
        assert_eq!(decode_one(&json_props(), &encode(&r)), Ok(r.clone()));
        // A producer that sets no content type is accepted too.
        assert_eq!(
            decode_one(&BasicProperties::default(), &encode(&r)),
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
        assert_eq!(decode_one(&json_props(), &encode(&three)), Ok(three));
    }

    #[test]
    fn quantity_is_optional_and_at_least_one() {
        let id = "6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f";
        let body = |extra: &str| {
            format!(r#"{{"request_id":"{id}","item_id":1,"user_id":"u"{extra}}}"#).into_bytes()
        };
        assert_eq!(decode_one(&json_props(), &body("")).unwrap().quantity, 1);
        assert_eq!(
            decode_one(&json_props(), &body(r#","quantity":1"#))
                .unwrap()
                .quantity,
            1
        );
        assert_eq!(
            decode_one(&json_props(), &body(r#","quantity":5"#))
                .unwrap()
                .quantity,
            5
        );
        for bad in [r#","quantity":0"#, r#","quantity":-2"#] {
            let err = decode_one(&json_props(), &body(bad)).unwrap_err();
            assert!(err.0.contains("quantity must be"), "{}", err.0);
        }
        for bad in [
            r#","quantity":"2""#,
            r#","quantity":1.5"#,
            r#","quantity":null"#,
        ] {
            assert!(decode_one(&json_props(), &body(bad)).is_err(), "{bad}");
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
            let err = decode_one(&props, &body).expect_err(expected);
            assert!(
                err.0.contains(expected),
                "{:?} should mention {expected:?}",
                err.0
            );
        }
    }

    #[test]
    fn a_batch_decides_its_good_elements_and_refuses_its_bad_ones_alone() {
        let request = |user: &str| OrderRequest {
            request_id: Uuid::new_v4(),
            item_id: 7,
            user_id: user.into(),
            quantity: 1,
        };
        let (ann, bob) = (request("ann"), request("bob"));
        let bad =
            br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":7,"user_id":""}"#;
        let body = encode_batch([&encode(&ann)[..], bad, &encode(&bob)[..]]);
        let Ok(Decoded::Batch(elements)) = decode(&json_props(), &body) else {
            panic!("a JSON array is a batch");
        };
        assert_eq!(elements.len(), 3);
        assert_eq!(elements[0], Ok(ann.clone()));
        let refused = elements[1].clone().unwrap_err();
        assert_eq!(refused.body, bad.to_vec(), "the element's own bytes");
        assert!(
            refused.reason.0.contains("user_id must be"),
            "{}",
            refused.reason
        );
        assert_eq!(elements[2], Ok(bob.clone()));
        // An element is bounded like a single request.
        let padded = format!(
            r#"{{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":7,"user_id":"u"{}}}"#,
            " ".repeat(BODY_LEN_MAX)
        );
        let body = encode_batch([&encode(&bob)[..], padded.as_bytes()]);
        let Ok(Decoded::Batch(elements)) = decode(&json_props(), &body) else {
            panic!("a batch");
        };
        assert_eq!(elements[0], Ok(bob));
        let refused = elements[1].clone().unwrap_err();
        assert!(refused.reason.0.contains("over the"), "{}", refused.reason);
        // Leading white space, and a batch of one, are batches too.
        let spaced = [b" \n".as_slice(), &encode_batch([&encode(&ann)[..]])].concat();
        assert_eq!(
            decode(&json_props(), &spaced),
            Ok(Decoded::Batch(vec![Ok(ann)]))
        );
    }

    #[test]
    fn a_batch_is_refused_whole_when_its_array_or_size_is_wrong() {
        let element =
            br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":"u"}"#;
        let many = encode_batch(std::iter::repeat_n(&element[..], BATCH_ELEMENTS_MAX + 1));
        let mut huge = encode_batch([&element[..]]);
        huge.splice(1..1, std::iter::repeat_n(b' ', BATCH_BODY_LEN_MAX));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"[]".to_vec(), "holds 1 to"),
            (many, "holds 1 to"),
            (huge, "over the"),
            (b"[{}, ".to_vec(), "invalid batch JSON"),
            (
                [&encode_batch([&element[..]])[..], b" x"].concat(),
                "trailing",
            ),
        ];
        for (body, expected) in cases {
            let err = decode(&json_props(), &body).expect_err(expected);
            assert!(
                err.0.contains(expected),
                "{:?} should mention {expected:?}",
                err.0
            );
        }
        let text = BasicProperties::default().with_content_type("text/plain".into());
        assert!(decode(&text, &encode_batch([&element[..]])).is_err());
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
        let dl = dead_letter_properties(&props, "bad", None);
        let h = dl.headers().as_ref().unwrap().inner();
        assert!(h.contains_key("x-trace"));
        assert_eq!(
            h.get(REASON_HEADER),
            Some(&AMQPValue::LongString("bad".into()))
        );
        assert!(!h.contains_key(ELEMENT_HEADER));
        let place = ElementOf {
            index: 2,
            elements: 5,
        };
        let dl = dead_letter_properties(&props, "bad", Some(place));
        let h = dl.headers().as_ref().unwrap().inner();
        assert_eq!(h.get(ELEMENT_HEADER), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(h.get(ELEMENTS_HEADER), Some(&AMQPValue::LongLongInt(5)));
    }
}

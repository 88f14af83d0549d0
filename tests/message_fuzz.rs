//! Fuzzes the broker message decoders with proptest: whatever bytes and properties a producer
//! sends, `decode` never panics, and whatever it accepts is a valid request (so the consumer
//! can decide it) that encodes back to itself; a batch's elements are judged each as it would be
//! alone. The same for `decode_replies`, which the API runs
//! on whatever arrives on its reply queue.
//!
//! Failing cases are saved to `proptest-regressions/message_fuzz.txt` and replayed first on
//! every later run: keep that file in git.

use lapin::BasicProperties;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use seckill::broker::message::{
    self, BATCH_BODY_LEN_MAX, BODY_LEN_MAX, CONTENT_TYPE_JSON, Decoded,
};
use seckill::domain::{OrderRequest, USER_ID_LEN_MAX};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/message_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    }
}

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(CONTENT_TYPE_JSON.to_string())),
        Just(Some("text/plain".to_string())),
        Just(Some("application/json; charset=utf-8".to_string())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

fn properties(content_type: Option<String>) -> BasicProperties {
    match content_type {
        Some(ct) => BasicProperties::default().with_content_type(ct.into()),
        None => BasicProperties::default(),
    }
}

/// JSON-ish values: the right shape often, wrong types, odd numbers and hostile strings too.
fn json_values() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,80}".prop_map(serde_json::Value::from),
        "[a-zA-Z0-9_.@:+-]{1,70}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(
            "6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f"
        )),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("request_id".to_string()),
                    Just("item_id".to_string()),
                    Just("user_id".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..5,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Messages shaped like a request, each field drawn from right and wrong values.
fn request_shaped() -> impl Strategy<Value = serde_json::Value> {
    let request_id = prop_oneof![
        any::<u128>().prop_map(|n| serde_json::Value::from(uuid::Uuid::from_u128(n).to_string())),
        json_values(),
    ];
    let item_id = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        json_values()
    ];
    let user_id = prop_oneof![
        "[a-zA-Z0-9_.@:+-]{1,64}".prop_map(serde_json::Value::from),
        "\\PC{0,70}".prop_map(serde_json::Value::from),
        json_values(),
    ];
    (request_id, item_id, user_id, any::<bool>()).prop_map(|(r, i, u, extra)| {
        let mut object = serde_json::json!({"request_id": r, "item_id": i, "user_id": u});
        if extra {
            object["extra"] = serde_json::Value::from(1);
        }
        object
    })
}

/// What every accepted message must be: a single request, or a batch whose every decoded
/// element is one.
fn check_decoded(body: &[u8], content_type: &Option<String>, decoded: &Decoded) {
    match decoded {
        Decoded::One(request) => check_accepted(body, content_type, request),
        Decoded::Batch(elements) => {
            assert!(body.len() <= BATCH_BODY_LEN_MAX);
            for request in elements.iter().flatten() {
                check_accepted(&message::encode(request), content_type, request);
            }
        }
    }
}

/// What every accepted request must be.
fn check_accepted(body: &[u8], content_type: &Option<String>, request: &OrderRequest) {
    assert!(body.len() <= BODY_LEN_MAX);
    assert!(
        content_type
            .as_deref()
            .is_none_or(|ct| ct == CONTENT_TYPE_JSON)
    );
    assert_eq!(request.validate(), Ok(()));
    assert!(!request.user_id.is_empty() && request.user_id.len() <= USER_ID_LEN_MAX);
    let again = message::decode(&properties(content_type.clone()), &message::encode(request));
    assert_eq!(
        again,
        Ok(Decoded::One(request.clone())),
        "encode ∘ decode is the identity"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..(BODY_LEN_MAX + 64)),
        content_type in content_types(),
    ) {
        if let Ok(decoded) = message::decode(&properties(content_type.clone()), &body) {
            check_decoded(&body, &content_type, &decoded);
        }
        let _ = message::decode_replies(&body);
    }

    #[test]
    fn json_ish_bodies_are_decided_or_refused_never_panic(
        value in prop_oneof![json_values(), request_shaped()],
        content_type in content_types(),
    ) {
        let body = serde_json::to_vec(&value).unwrap();
        if let Ok(decoded) = message::decode(&properties(content_type.clone()), &body) {
            check_decoded(&body, &content_type, &decoded);
        }
        let _ = message::decode_replies(&body);
    }

    #[test]
    fn valid_requests_are_accepted(
        id in any::<u128>(),
        item_id in any::<i64>(),
        user_id in "[a-zA-Z0-9_.@:+-]{1,64}",
    ) {
        let request = OrderRequest { request_id: uuid::Uuid::from_u128(id), item_id, user_id, quantity: 1 };
        let body = message::encode(&request);
        let decoded = message::decode(&properties(Some(CONTENT_TYPE_JSON.into())), &body);
        prop_assert_eq!(decoded, Ok(Decoded::One(request)));
    }

    #[test]
    fn a_batch_judges_each_element_as_it_would_be_judged_alone(
        values in prop::collection::vec(prop_oneof![request_shaped(), json_values()], 1..20),
    ) {
        let props = properties(Some(CONTENT_TYPE_JSON.into()));
        let body = serde_json::to_vec(&values).unwrap();
        let Ok(Decoded::Batch(elements)) = message::decode(&props, &body) else {
            panic!("an array of 1 to 19 values is a batch");
        };
        prop_assert_eq!(elements.len(), values.len());
        for (value, element) in values.iter().zip(&elements) {
            let alone = serde_json::to_vec(value).unwrap();
            let judged_alone = match message::decode(&props, &alone) {
                Ok(Decoded::One(request)) => Some(request),
                _ => None,
            };
            match element {
                Ok(request) => prop_assert_eq!(Some(request.clone()), judged_alone),
                Err(refused) => {
                    prop_assert!(judged_alone.is_none(), "{:?} refused in a batch only", value);
                    prop_assert_eq!(&refused.body, &alone, "a refused element keeps its own body");
                }
            }
        }
    }
}

/// Hand-picked hostile bodies, replayed on every run.
#[test]
fn hostile_corpus_is_refused_without_panicking() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        r#"{{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":{}"u"{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let corpus: Vec<Vec<u8>> = vec![
        vec![],
        b"\xef\xbb\xbf{}".to_vec(),
        b"\0\0\0\0".to_vec(),
        b"null".to_vec(),
        deep.into_bytes(),
        deep_object.into_bytes(),
        br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1e999,"user_id":"u"}"#.to_vec(),
        br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":"u\ud800"}"#.to_vec(),
        br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":"'; DROP TABLE orders; --"}"#.to_vec(),
        br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":"u","user_id":"v"}"#.to_vec(),
        br#"{"request_id":"6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f","item_id":1,"user_id":"u"} trailing"#.to_vec(),
    ];
    let props = properties(Some(CONTENT_TYPE_JSON.into()));
    for body in corpus {
        let result = message::decode(&props, &body);
        // Refused whole; or, for an array (a batch), every element refused.
        let refused = match &result {
            Err(_) => true,
            Ok(Decoded::Batch(elements)) => elements.iter().all(Result::is_err),
            Ok(Decoded::One(_)) => false,
        };
        assert!(
            refused,
            "{:.200?} → {:.300?}",
            String::from_utf8_lossy(&body),
            result
        );
        let _ = message::decode_replies(&body);
    }
}

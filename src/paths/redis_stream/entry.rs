//! One entry of `redis-stream`'s stream: the decision the script made and the API answered,
//! as the writer reads it back. The script writes it (`XADD … request_id R item_id I user_id U
//! verdict V`) and keeps `V` in the item's verdict hash, so a verdict has one spelling for both:
//! `purchased:<order id>`, `sold_out` or `already_purchased`.
//!
//! Reading is defensive: the stream is plain Redis, anyone with access can `XADD` to it, and an
//! entry the writer cannot read must be set aside once, never retried forever (the poison
//! message of zaiyunduan123/springboot-seckill #7). So parsing gives each entry its own result.

use redis::Value;
use uuid::Uuid;

use crate::domain::{ItemId, OrderRequest, Status};

/// What the script answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Granted: a unit taken, the buyer listed, this order id given to the client.
    Purchased(Uuid),
    SoldOut,
    AlreadyPurchased,
}

impl Verdict {
    /// Parses the script's spelling; `None` for anything else.
    pub fn parse(text: &str) -> Option<Verdict> {
        match text {
            "sold_out" => Some(Verdict::SoldOut),
            "already_purchased" => Some(Verdict::AlreadyPurchased),
            _ => text
                .strip_prefix("purchased:")
                .and_then(|id| id.parse().ok())
                .map(Verdict::Purchased),
        }
    }

    pub fn status(self) -> Status {
        match self {
            Verdict::Purchased(_) => Status::Purchased,
            Verdict::SoldOut => Status::SoldOut,
            Verdict::AlreadyPurchased => Status::AlreadyPurchased,
        }
    }

    pub fn order_id(self) -> Option<Uuid> {
        match self {
            Verdict::Purchased(id) => Some(id),
            _ => None,
        }
    }
}

/// A decision read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's stream id (`<ms>-<seq>`): what the writer acknowledges.
    pub id: String,
    pub request: OrderRequest,
    pub told: Verdict,
}

impl Entry {
    /// Milliseconds since the epoch at which Redis added it (the first part of its id).
    pub fn added_at_ms(&self) -> u64 {
        self.id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0)
    }
}

/// An entry the writer cannot read: its id (to acknowledge it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub id: String,
    pub why: String,
}

/// The entries of an `XREADGROUP` reply (`[[stream, [[id, [field, value, …]], …]]]`, or nil when
/// the read timed out) or of `XAUTOCLAIM`'s second element (`[[id, fields], …]`), each read
/// alone. An error only for a reply that is not shaped like either.
pub fn parse_read_reply(reply: &Value) -> Result<Vec<Result<Entry, Unreadable>>, String> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut entries = Vec::new();
            for stream in streams {
                match stream {
                    Value::Array(pair) if pair.len() == 2 => {
                        entries.extend(parse_entries(&pair[1])?);
                    }
                    other => return Err(format!("not a [stream, entries] pair: {other:?}")),
                }
            }
            Ok(entries)
        }
        Value::Map(streams) => {
            let mut entries = Vec::new();
            for (_, list) in streams {
                entries.extend(parse_entries(list)?);
            }
            Ok(entries)
        }
        other => Err(format!("not a stream read reply: {other:?}")),
    }
}

/// `[[id, [field, value, …]], …]`, each entry read alone.
pub fn parse_entries(list: &Value) -> Result<Vec<Result<Entry, Unreadable>>, String> {
    let Value::Array(entries) = list else {
        return Err(format!("not a list of entries: {list:?}"));
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::Array(pair) if pair.len() == 2 => {
                let id = text(&pair[0])
                    .ok_or_else(|| format!("an entry id that is no text: {pair:?}"))?;
                Ok(parse_fields(&pair[1])
                    .map(|(request, told)| Entry {
                        id: id.clone(),
                        request,
                        told,
                    })
                    .map_err(|why| Unreadable { id, why }))
            }
            other => Err(format!("not an [id, fields] pair: {other:?}")),
        })
        .collect()
}

/// The request and the verdict of one entry's fields.
fn parse_fields(fields: &Value) -> Result<(OrderRequest, Verdict), String> {
    let Value::Array(flat) = fields else {
        return Err(format!(
            "fields are not a list (a deleted entry?): {fields:?}"
        ));
    };
    let mut pairs = flat.chunks_exact(2);
    let (mut request_id, mut item_id, mut user_id, mut verdict) = (None, None, None, None);
    for pair in pairs.by_ref() {
        let (Some(name), Some(value)) = (text(&pair[0]), text(&pair[1])) else {
            return Err("a field or value that is no text".into());
        };
        match name.as_str() {
            "request_id" => request_id = Some(value),
            "item_id" => item_id = Some(value),
            "user_id" => user_id = Some(value),
            "verdict" => verdict = Some(value),
            _ => {}
        }
    }
    if !pairs.remainder().is_empty() {
        return Err("an odd number of field names and values".into());
    }
    let request_id: Uuid = request_id
        .ok_or("no request_id")?
        .parse()
        .map_err(|e| format!("request_id: {e}"))?;
    let item_id: ItemId = item_id
        .ok_or("no item_id")?
        .parse()
        .map_err(|e| format!("item_id: {e}"))?;
    let user_id = user_id.ok_or("no user_id")?;
    crate::domain::validate_user_id(&user_id).map_err(|e| format!("user_id: {e}"))?;
    let verdict = verdict.ok_or("no verdict")?;
    let told = Verdict::parse(&verdict).ok_or_else(|| format!("unknown verdict {verdict:?}"))?;
    let request = OrderRequest {
        request_id,
        item_id,
        user_id,
        quantity: 1,
    };
    Ok((request, told))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn verdicts_read_back_as_the_script_spells_them() {
        let order = Uuid::new_v4();
        assert_eq!(
            Verdict::parse(&format!("purchased:{order}")),
            Some(Verdict::Purchased(order))
        );
        assert_eq!(Verdict::parse("sold_out"), Some(Verdict::SoldOut));
        assert_eq!(
            Verdict::parse("already_purchased"),
            Some(Verdict::AlreadyPurchased)
        );
        assert_eq!(Verdict::parse("purchased:not-a-uuid"), None);
        assert_eq!(Verdict::parse("purchased"), None);
    }

    #[test]
    fn each_entry_is_read_alone_and_a_bad_one_is_named_by_its_id() {
        let request_id = Uuid::new_v4().to_string();
        let good = entry(
            "1700000000000-0",
            &[
                "request_id",
                &request_id,
                "item_id",
                "7",
                "user_id",
                "u1",
                "verdict",
                "sold_out",
            ],
        );
        let bad = entry("1700000000000-1", &["request_id", "nope", "item_id", "7"]);
        let odd = entry("1700000000000-2", &["request_id"]);
        let deleted = Value::Array(vec![bulk("1700000000000-3"), Value::Nil]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("p:stream:orders"),
            Value::Array(vec![good, bad, odd, deleted]),
        ])]);
        let entries = parse_read_reply(&reply).unwrap();
        assert_eq!(entries.len(), 4);
        let first = entries[0].as_ref().unwrap();
        assert_eq!(first.request.item_id, 7);
        assert_eq!(first.told, Verdict::SoldOut);
        assert_eq!(first.added_at_ms(), 1_700_000_000_000);
        for (i, e) in entries[1..].iter().enumerate() {
            let unreadable = e.as_ref().unwrap_err();
            assert_eq!(unreadable.id, format!("1700000000000-{}", i + 1));
        }
        assert!(parse_read_reply(&Value::Nil).unwrap().is_empty());
        assert!(parse_read_reply(&Value::Int(3)).is_err());
    }
}

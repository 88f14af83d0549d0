//! The words of the domain, shared by every path: an item on sale, a purchase request, and the
//! outcome decided for it. Validation lives here so the API and the broker consumer refuse the same
//! things for the same reasons.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Database id of an item (`items.id`).
pub type ItemId = i64;

/// Longest user id accepted, in bytes (the schema checks the same bound).
pub const USER_ID_LEN_MAX: usize = 64;
/// Longest item name accepted, in characters.
pub const ITEM_NAME_LEN_MAX: usize = 200;
/// Largest stock one item may start with: far above any real sale, far below overflow.
pub const STOCK_MAX: i64 = 1_000_000_000;

/// One buyer asking for one unit of one item. This is also the JSON body of the broker message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Idempotency key: the same id is the same request, however often it is sent.
    pub request_id: Uuid,
    pub item_id: ItemId,
    pub user_id: String,
}

impl OrderRequest {
    /// Checks what the type system cannot: the user id's length and characters.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_user_id(&self.user_id)
    }
}

/// What a purchase path decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A unit was sold to this user: an order row exists.
    Purchased,
    /// No stock was left when this request's turn came.
    SoldOut,
    /// This user already holds an order for this item.
    AlreadyPurchased,
    /// An optimistic path (`optimistic`, `redis-watch`) lost its compare-and-set more times than
    /// it may retry. Nothing was sold: not an order, and not a claim that stock ran out.
    FailedRetry,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Purchased => "purchased",
            Status::SoldOut => "sold_out",
            Status::AlreadyPurchased => "already_purchased",
            Status::FailedRetry => "failed_retry",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "purchased" => Some(Status::Purchased),
            "sold_out" => Some(Status::SoldOut),
            "already_purchased" => Some(Status::AlreadyPurchased),
            "failed_retry" => Some(Status::FailedRetry),
            _ => None,
        }
    }
}

/// The decision for one request, as stored in `outcomes` and sent back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub request_id: Uuid,
    pub status: Status,
    /// Set exactly when `status` is `Purchased`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub order_id: Option<Uuid>,
}

/// A client's input that breaks a rule; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

pub fn validate_user_id(user_id: &str) -> Result<(), InvalidInput> {
    if user_id.is_empty() || user_id.len() > USER_ID_LEN_MAX {
        return Err(InvalidInput(format!(
            "user_id must be 1 to {USER_ID_LEN_MAX} bytes, got {}",
            user_id.len()
        )));
    }
    if let Some(bad) = user_id.chars().find(|c| !is_user_id_char(*c)) {
        return Err(InvalidInput(format!(
            "user_id may hold only letters, digits and {USER_ID_PUNCTUATION:?}; got {bad:?}"
        )));
    }
    Ok(())
}

/// The punctuation a user id may hold besides letters and digits: enough for numeric ids,
/// UUIDs, e-mail addresses and `tenant:user` names.
pub const USER_ID_PUNCTUATION: &str = "-_.@:+";

/// A user id is an identifier, not text: letters and digits of any script plus a little
/// punctuation. No whitespace, control characters, quotes, semicolons, backslashes or brackets,
/// so an id is safe to put in a log line, a CSV export or a shell command as it is. (Every SQL
/// statement here is parameterised anyway; this guards what lies beyond the database.)
fn is_user_id_char(c: char) -> bool {
    c.is_alphanumeric() || USER_ID_PUNCTUATION.contains(c)
}

pub fn validate_item(name: &str, stock: i64) -> Result<(), InvalidInput> {
    let name_len = name.chars().count();
    if name.trim().is_empty() || name_len > ITEM_NAME_LEN_MAX {
        return Err(InvalidInput(format!(
            "name must be 1 to {ITEM_NAME_LEN_MAX} characters and not blank"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput(
            "name must not contain control characters".into(),
        ));
    }
    // A sale of nothing is a mistake (there is no restock), so zero is refused too.
    if !(1..=STOCK_MAX).contains(&stock) {
        return Err(InvalidInput(format!(
            "stock must be an integer from 1 to {STOCK_MAX}, got {stock}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_bounds() {
        assert!(validate_user_id("alice").is_ok());
        assert!(validate_user_id(&"a".repeat(64)).is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id(&"a".repeat(65)).is_err());
        // 22 three-byte characters = 66 bytes: the bound is in bytes, as the issue says.
        assert!(validate_user_id(&"秒".repeat(22)).is_err());
        assert!(validate_user_id("bob\n").is_err());
        assert!(validate_user_id("x\u{0}y").is_err());
        assert!(validate_user_id("user-42").is_ok());
        assert!(validate_user_id("ann.lee+sale@example.com").is_ok());
        assert!(validate_user_id("tenant_7:6f1c1b7e-6f0e-4e53-8f0a-1a2b3c4d5e6f").is_ok());
        assert!(validate_user_id("秒杀用户").is_ok());
        for hostile in [
            "'; DROP TABLE orders; --",
            "a b",
            "\"quoted\"",
            "back\\slash",
            "<script>",
            "x\u{200b}y", // zero-width space: a format character, not a letter
            "tab\there",
        ] {
            assert!(validate_user_id(hostile).is_err(), "{hostile:?}");
        }
    }

    #[test]
    fn item_bounds() {
        assert!(validate_item("phone", 1).is_ok());
        assert!(validate_item("phone", 0).is_err());
        assert!(validate_item("phone", STOCK_MAX).is_ok());
        assert!(validate_item("phone", -1).is_err());
        assert!(validate_item("phone", STOCK_MAX + 1).is_err());
        assert!(validate_item("  ", 1).is_err());
        assert!(validate_item(&"n".repeat(201), 1).is_err());
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Purchased,
            Status::SoldOut,
            Status::AlreadyPurchased,
            Status::FailedRetry,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(Status::parse("pending"), None);
    }
}

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
/// Largest red packet total, in minor units (ten billion in units of 1/100): far below overflow
/// even when doubled (the share draw computes `2 · remaining`).
pub const PACKET_TOTAL_MAX: i64 = 1_000_000_000_000;

/// One buyer asking for `quantity` units of one item. This is also the JSON body of the broker
/// message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Idempotency key: the same id is the same request, however often it is sent.
    pub request_id: Uuid,
    pub item_id: ItemId,
    pub user_id: String,
    /// Units asked for: absent means 1, and 1 is left out when encoding, so a default request's
    /// message is byte for byte what it was before quantities existed (an older consumer, which
    /// refuses unknown fields, still decides it).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub quantity: i64,
}

fn one() -> i64 {
    1
}

fn is_one(n: &i64) -> bool {
    *n == 1
}

impl OrderRequest {
    /// Checks what the type system cannot: the user id's length and characters, and a quantity
    /// of at least 1 (its upper bound is the item's: see `sale::ItemRules::check_quantity`).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_user_id(&self.user_id)?;
        validate_quantity(self.quantity)
    }
}

pub fn validate_quantity(quantity: i64) -> Result<(), InvalidInput> {
    if !(1..=STOCK_MAX).contains(&quantity) {
        return Err(InvalidInput(format!(
            "quantity must be an integer from 1 to the item's per_user_limit, got {quantity}"
        )));
    }
    Ok(())
}

/// What is on sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ItemKind {
    /// Units of a product; a user may buy up to the item's `per_user_limit` of them.
    Goods,
    /// A total amount split into shares of random size, one share per user.
    RedPacket,
}

/// A valid item to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemSpec {
    Goods {
        stock: i64,
        per_user_limit: i64,
    },
    /// `shares` is the stock; every share is at least one minor unit, so `shares <= total`.
    RedPacket {
        total: i64,
        shares: i64,
    },
}

impl ItemSpec {
    /// Checks the fields of `POST /items` for the item's kind (name apart, see [`validate_item`]).
    pub fn new(
        kind: ItemKind,
        stock: Option<i64>,
        per_user_limit: Option<i64>,
        total: Option<i64>,
        shares: Option<i64>,
    ) -> Result<ItemSpec, InvalidInput> {
        let refuse = |message: &str| Err(InvalidInput(message.into()));
        match kind {
            ItemKind::Goods => {
                if total.is_some() || shares.is_some() {
                    return refuse("total_amount and shares are for red packets only");
                }
                let Some(stock) = stock else {
                    return refuse("stock is required");
                };
                validate_stock(stock)?;
                let per_user_limit = per_user_limit.unwrap_or(1);
                if !(1..=stock).contains(&per_user_limit) {
                    return Err(InvalidInput(format!(
                        "per_user_limit must be an integer from 1 to the stock ({stock}), got {per_user_limit}"
                    )));
                }
                Ok(ItemSpec::Goods {
                    stock,
                    per_user_limit,
                })
            }
            ItemKind::RedPacket => {
                if stock.is_some() {
                    return refuse("a red packet has shares, not stock");
                }
                if per_user_limit.is_some_and(|l| l != 1) {
                    return refuse("a red packet is one share per user: per_user_limit must be 1");
                }
                let (Some(total), Some(shares)) = (total, shares) else {
                    return refuse("a red packet needs total_amount and shares");
                };
                if !(1..=PACKET_TOTAL_MAX).contains(&total) {
                    return Err(InvalidInput(format!(
                        "total_amount must be an integer from 1 to {PACKET_TOTAL_MAX} (minor units, e.g. cents), got {total}"
                    )));
                }
                if !(1..=STOCK_MAX).contains(&shares) || shares > total {
                    return Err(InvalidInput(format!(
                        "shares must be an integer from 1 to total_amount ({total}) so that no share is zero, got {shares}"
                    )));
                }
                Ok(ItemSpec::RedPacket { total, shares })
            }
        }
    }

    pub fn stock(&self) -> i64 {
        match *self {
            ItemSpec::Goods { stock, .. } => stock,
            ItemSpec::RedPacket { shares, .. } => shares,
        }
    }
}

/// What a purchase path decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The units asked for were sold to this user: their order row exists (it holds these units,
    /// with any the user bought before).
    Purchased,
    /// Fewer units were left than asked for when this request's turn came (none left, for a
    /// quantity of 1; for a red packet, no share left).
    SoldOut,
    /// This user already holds units of this item, and these would take them past its
    /// per-user limit (with the default limit of 1: the user already bought it).
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
    /// A red packet grab's share, in minor units: set exactly for a purchase of a red packet.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub amount: Option<i64>,
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
    validate_stock(stock)
}

fn validate_stock(stock: i64) -> Result<(), InvalidInput> {
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
    fn item_specs() {
        use ItemKind::{Goods, RedPacket};
        let goods = |stock, limit| ItemSpec::new(Goods, stock, limit, None, None);
        assert_eq!(
            goods(Some(5), None),
            Ok(ItemSpec::Goods {
                stock: 5,
                per_user_limit: 1
            })
        );
        assert!(goods(Some(5), Some(5)).is_ok());
        assert!(goods(Some(5), Some(6)).is_err());
        assert!(goods(Some(5), Some(0)).is_err());
        assert!(goods(None, Some(1)).is_err());
        assert!(ItemSpec::new(Goods, Some(5), None, Some(10), None).is_err());
        let packet = |total, shares| ItemSpec::new(RedPacket, None, None, total, shares);
        assert!(packet(Some(9), Some(10)).is_err(), "a share would be zero");
        assert!(packet(Some(10), None).is_err());
        assert!(packet(Some(PACKET_TOTAL_MAX + 1), Some(1)).is_err());
        assert!(ItemSpec::new(RedPacket, Some(3), None, Some(10), Some(3)).is_err());
        assert!(ItemSpec::new(RedPacket, None, Some(2), Some(10), Some(3)).is_err());
        assert!(ItemSpec::new(RedPacket, None, Some(1), Some(10), Some(3)).is_ok());
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

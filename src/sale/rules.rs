//! What an item allows a request, and the one purchase rule every deciding path applies.

use crate::domain::{InvalidInput, ItemKind, ItemSpec, Status, validate_quantity};

use super::Holding;

/// What a request must respect to be decided for an item (beyond stock and what the user holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRules {
    pub kind: ItemKind,
    pub per_user_limit: i64,
}

/// Why [`ItemRules::judge`] sells nothing to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The units asked for would take the user past the item's per-user limit.
    OverLimit,
    /// Fewer units are left than asked for.
    SoldOut,
}

impl Refusal {
    /// The status the request is answered with.
    pub fn status(self) -> Status {
        match self {
            Refusal::OverLimit => Status::AlreadyPurchased,
            Refusal::SoldOut => Status::SoldOut,
        }
    }
}

impl ItemRules {
    /// The rules of a default item: goods, one unit per user.
    pub const ONE_PER_USER: ItemRules = ItemRules {
        kind: ItemKind::Goods,
        per_user_limit: 1,
    };

    /// A quantity no request may ask of this item, whoever asks and whatever is left: more than
    /// one user may ever hold, or anything but 1 of a red packet.
    pub fn check_quantity(&self, quantity: i64) -> Result<(), InvalidInput> {
        validate_quantity(quantity)?;
        if self.kind == ItemKind::RedPacket && quantity != 1 {
            return Err(InvalidInput(format!(
                "a red packet is grabbed one share at a time: quantity must be 1, got {quantity}"
            )));
        }
        if quantity > self.per_user_limit {
            return Err(InvalidInput(format!(
                "quantity {quantity} is over the item's per_user_limit of {}",
                self.per_user_limit
            )));
        }
        Ok(())
    }

    /// The purchase rule: may a user who holds `holding` buy `quantity` more units when
    /// `stock_remaining` are left? The limit is checked first, so a repeat buyer never takes
    /// stock and is told `already_purchased` even once stock has run out (the complaint of
    /// systems that check stock first: repeat requests drained it). The quantity must pass
    /// [`ItemRules::check_quantity`].
    pub fn judge(
        &self,
        holding: Option<&Holding>,
        quantity: i64,
        stock_remaining: i64,
    ) -> Result<(), Refusal> {
        let held = holding.map_or(0, |h| h.units);
        if held + quantity > self.per_user_limit {
            return Err(Refusal::OverLimit);
        }
        if quantity > stock_remaining {
            return Err(Refusal::SoldOut);
        }
        Ok(())
    }
}

impl From<ItemSpec> for ItemRules {
    fn from(spec: ItemSpec) -> Self {
        match spec {
            ItemSpec::Goods { per_user_limit, .. } => ItemRules {
                kind: ItemKind::Goods,
                per_user_limit,
            },
            ItemSpec::RedPacket { .. } => ItemRules {
                kind: ItemKind::RedPacket,
                per_user_limit: 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn quantities_are_checked_against_the_rules() {
        use ItemKind::{Goods, RedPacket};
        let packet = |total, shares| ItemSpec::new(RedPacket, None, None, total, shares);
        assert_eq!(
            packet(Some(10), Some(10)).map(|s| (s.stock(), ItemRules::from(s).per_user_limit)),
            Ok((10, 1))
        );

        let limited = ItemRules {
            kind: Goods,
            per_user_limit: 3,
        };
        assert!(limited.check_quantity(3).is_ok());
        assert!(limited.check_quantity(4).is_err());
        assert!(limited.check_quantity(0).is_err());
        assert!(ItemRules::ONE_PER_USER.check_quantity(2).is_err());
        let packet_rules = ItemRules {
            kind: RedPacket,
            per_user_limit: 1,
        };
        assert!(packet_rules.check_quantity(1).is_ok());
        assert!(packet_rules.check_quantity(2).is_err());
    }

    #[test]
    fn the_limit_is_judged_before_the_stock() {
        let rules = ItemRules {
            kind: ItemKind::Goods,
            per_user_limit: 3,
        };
        let holding = Holding {
            order_id: Uuid::nil(),
            units: 2,
        };
        assert_eq!(rules.judge(None, 3, 3), Ok(()));
        assert_eq!(rules.judge(Some(&holding), 1, 1), Ok(()));
        assert_eq!(rules.judge(Some(&holding), 2, 0), Err(Refusal::OverLimit));
        assert_eq!(rules.judge(Some(&holding), 1, 0), Err(Refusal::SoldOut));
        assert_eq!(rules.judge(None, 3, 2), Err(Refusal::SoldOut));
        assert_eq!(Refusal::OverLimit.status(), Status::AlreadyPurchased);
        assert_eq!(Refusal::SoldOut.status(), Status::SoldOut);
    }
}

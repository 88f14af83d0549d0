//! A cell's verdict: what the buyers were told, held against what the database (and, for the
//! Redis paths, Redis) holds once the sale settled. Nothing here trusts the path's own counts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::buyer::BuyerLog;
use crate::audit::{ItemAudit, Violation};

/// Width of the time slices refusals are counted in.
const REFUSAL_SLICE: Duration = Duration::from_millis(100);

/// What the database holds for the sale's item once it settled.
#[derive(Debug, Default)]
pub struct Held {
    /// Each decided request id's status.
    pub outcomes: HashMap<Uuid, String>,
    /// The request ids that made an order.
    pub ordered: HashSet<Uuid>,
}

impl Held {
    pub async fn read(pool: &PgPool, item_id: i64) -> sqlx::Result<Self> {
        let outcomes: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT request_id, status FROM outcomes WHERE item_id = $1")
                .bind(item_id)
                .fetch_all(pool)
                .await?;
        let ordered: Vec<Uuid> =
            sqlx::query_scalar("SELECT request_id FROM orders WHERE item_id = $1")
                .bind(item_id)
                .fetch_all(pool)
                .await?;
        Ok(Self {
            outcomes: outcomes.into_iter().collect(),
            ordered: ordered.into_iter().collect(),
        })
    }
}

/// Redis's view of the item after recovery, for the paths that keep stock and buyers there.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RedisView {
    /// Units Redis would still sell (`None`: the item is not loaded, so it loads from the
    /// database at its next request).
    pub stock_left: Option<i64>,
    pub buyers: HashSet<String>,
}

/// One cell of the matrix: a path under a fault.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CellVerdict {
    pub requests: usize,
    /// Buyers told `purchased` whose order is not in the database.
    pub lost_sales: usize,
    /// Requests accepted (`202`) and never decided, neither told nor held.
    pub lost_requests: usize,
    /// Request ids answered two different ways (to the buyer, or the buyer against the
    /// database's outcome).
    pub decided_twice: usize,
    /// Units sold past the stock, and users holding past the limit (from the audit).
    pub oversold_units: i64,
    pub over_limit_users: i64,
    /// Every audit violation, as its sentence.
    pub audit: Vec<String>,
    /// Redis and PostgreSQL disagreeing after recovery, said plainly.
    pub redis_disagrees: Option<String>,
    /// Buyers who never got an answer that accepted them before the retry deadline.
    pub gave_up: usize,
    /// Answers no README line allows (a 4xx, a body that is not an order status).
    pub unexpected: usize,
    /// `503` answers, `5xx` other than `503`, and failed connections or timeouts.
    pub unavailable: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    /// Seconds of the run in which at least one request was refused or failed.
    pub refused_secs: f64,
    /// An example of each kind of loss, for the log.
    pub examples: Vec<String>,
}

impl CellVerdict {
    /// Nothing lost, nothing decided twice, nothing oversold, the audit clean, Redis in step
    /// and no server error: refusals (503) and retries are how a fault is meant to show.
    pub fn is_clean(&self) -> bool {
        self.lost_sales == 0
            && self.lost_requests == 0
            && self.decided_twice == 0
            && self.audit.is_empty()
            && self.redis_disagrees.is_none()
            && self.server_errors == 0
            && self.gave_up == 0
            && self.unexpected == 0
    }

    /// The cell as the matrix prints it: `clean`, or the counts of what went wrong.
    pub fn cell_text(&self) -> String {
        if self.is_clean() {
            return "clean".into();
        }
        let mut parts = Vec::new();
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                parts.push(format!("{what} {n}"));
            }
        };
        count(self.lost_sales as u64, "lost-sale");
        count(self.lost_requests as u64, "lost-req");
        count(self.decided_twice as u64, "twice");
        count(self.oversold_units.max(0) as u64, "oversold");
        count(self.over_limit_users.max(0) as u64, "over-limit");
        count(self.server_errors, "5xx");
        count(self.gave_up as u64, "gave-up");
        count(self.unexpected as u64, "odd");
        if self.redis_disagrees.is_some() {
            parts.push("redis≠pg".into());
        }
        let other_audit = self.audit.len()
            - usize::from(self.oversold_units > 0)
            - usize::from(self.over_limit_users > 0);
        if other_audit > 0 {
            parts.push(format!("audit {other_audit}"));
        }
        parts.join(" ")
    }
}

/// Judges a cell from the buyers' logs, the database and the audit (and Redis, if the path
/// keeps its sale there).
pub fn judge(
    logs: &[BuyerLog],
    held: &Held,
    audit: &ItemAudit,
    redis: Option<(&RedisView, i64, &HashSet<String>)>,
) -> CellVerdict {
    let mut v = CellVerdict {
        requests: logs.len(),
        ..CellVerdict::default()
    };
    let example = |v: &mut CellVerdict, text: String| {
        if v.examples.len() < 8 {
            v.examples.push(text);
        }
    };
    let mut slices = HashSet::new();
    for log in logs {
        v.unavailable += u64::from(log.unavailable);
        v.server_errors += u64::from(log.server_errors);
        v.transport_errors += u64::from(log.transport_errors);
        slices.extend(
            log.refused_at
                .iter()
                .map(|at| at.as_millis() / REFUSAL_SLICE.as_millis()),
        );
        if log.unexpected.is_some() {
            v.unexpected += 1;
            example(
                &mut v,
                format!("{}: unexpected answer {:?}", log.request_id, log.unexpected),
            );
            continue;
        }
        let in_db = held.outcomes.get(&log.request_id);
        if log.told.as_deref() == Some("purchased") && !held.ordered.contains(&log.request_id) {
            v.lost_sales += 1;
            example(
                &mut v,
                format!(
                    "{}: told purchased, no order in the database",
                    log.request_id
                ),
            );
        }
        let answered_two_ways = log.told_otherwise.is_some()
            || matches!((&log.told, in_db), (Some(told), Some(held)) if told != held);
        if answered_two_ways {
            v.decided_twice += 1;
            example(
                &mut v,
                format!(
                    "{}: told {:?} (earlier {:?}), the database holds {:?}",
                    log.request_id, log.told, log.told_otherwise, in_db
                ),
            );
        }
        if !log.accepted {
            v.gave_up += 1;
            example(
                &mut v,
                format!("{}: never accepted before the deadline", log.request_id),
            );
        } else if log.told.is_none() && in_db.is_none() {
            v.lost_requests += 1;
            example(
                &mut v,
                format!("{}: accepted, never decided", log.request_id),
            );
        }
    }
    v.refused_secs = slices.len() as f64 * REFUSAL_SLICE.as_secs_f64();
    for violation in &audit.violations {
        match violation {
            Violation::Oversold {
                units_sold,
                stock_initial,
                ..
            } => v.oversold_units = units_sold - stock_initial,
            Violation::OverLimit { users, .. } | Violation::DuplicateBuyers { users } => {
                v.over_limit_users = v.over_limit_users.max(*users)
            }
            _ => {}
        }
        v.audit.push(violation.to_string());
    }
    if let Some((view, stock_remaining, buyers)) = redis {
        v.redis_disagrees = disagreement(view, stock_remaining, buyers);
    }
    v
}

/// How Redis's stock and buyers differ from the database's, if they do. An item Redis does not
/// hold is no disagreement: it loads from the database at its next request.
fn disagreement(
    view: &RedisView,
    stock_remaining: i64,
    buyers: &HashSet<String>,
) -> Option<String> {
    let stock_left = view.stock_left?;
    let mut what = Vec::new();
    if stock_left != stock_remaining {
        what.push(format!(
            "Redis would sell {stock_left} more, the database has {stock_remaining} left"
        ));
    }
    let without_order = view.buyers.difference(buyers).count();
    let unlisted = buyers.difference(&view.buyers).count();
    if without_order > 0 {
        what.push(format!("{without_order} Redis buyer(s) hold no order"));
    }
    if unlisted > 0 {
        what.push(format!(
            "{unlisted} order holder(s) missing from Redis's buyers"
        ));
    }
    (!what.is_empty()).then(|| what.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(violations: Vec<Violation>) -> ItemAudit {
        ItemAudit {
            item_id: 1,
            stock_initial: 2,
            stock_remaining: 0,
            orders: 2,
            units_sold: 2,
            undecided: 0,
            outcomes: 3,
            failed_retry: 0,
            violations,
        }
    }

    fn told(status: Option<&str>) -> BuyerLog {
        BuyerLog {
            request_id: Uuid::new_v4(),
            user_id: "u".into(),
            told: status.map(str::to_owned),
            accepted: true,
            ..BuyerLog::default()
        }
    }

    #[test]
    fn buyers_answers_held_against_the_database() {
        let sold = told(Some("purchased"));
        let lost = told(Some("purchased"));
        let flipped = told(Some("purchased"));
        let undecided = told(None);
        let mut refused = told(Some("sold_out"));
        refused.unavailable = 2;
        refused.refused_at = vec![Duration::from_millis(1010), Duration::from_millis(1090)];
        let mut held = Held::default();
        held.outcomes.insert(sold.request_id, "purchased".into());
        held.ordered.insert(sold.request_id);
        held.outcomes.insert(flipped.request_id, "sold_out".into());
        held.outcomes.insert(refused.request_id, "sold_out".into());
        let logs = [sold, lost, flipped, undecided, refused];
        let v = judge(&logs, &held, &audit(vec![]), None);
        assert_eq!((v.lost_sales, v.decided_twice, v.lost_requests), (2, 1, 1));
        assert_eq!(v.unavailable, 2);
        assert!(
            (v.refused_secs - 0.1).abs() < 1e-9,
            "two refusals in one slice"
        );
        assert!(!v.is_clean());
        assert_eq!(v.cell_text(), "lost-sale 2 lost-req 1 twice 1");

        let clean = judge(&logs[..1], &held, &audit(vec![]), None);
        assert!(clean.is_clean(), "{clean:?}");
        assert_eq!(clean.cell_text(), "clean");
    }

    #[test]
    fn oversold_and_a_redis_out_of_step_are_counted() {
        let over = Violation::Oversold {
            units_sold: 5,
            orders: 5,
            stock_initial: 2,
        };
        let buyers: HashSet<String> = ["a".to_owned()].into();
        let view = RedisView {
            stock_left: Some(1),
            buyers: ["a".to_owned(), "b".to_owned()].into(),
        };
        let v = judge(
            &[],
            &Held::default(),
            &audit(vec![over]),
            Some((&view, 0, &buyers)),
        );
        assert_eq!(v.oversold_units, 3);
        let said = v.redis_disagrees.clone().expect("out of step");
        assert!(
            said.contains("Redis would sell 1 more")
                && said.contains("1 Redis buyer(s) hold no order"),
            "{said}"
        );
        assert_eq!(v.cell_text(), "oversold 3 redis≠pg");
        let unloaded = RedisView {
            stock_left: None,
            buyers: HashSet::new(),
        };
        assert!(
            judge(
                &[],
                &Held::default(),
                &audit(vec![]),
                Some((&unloaded, 0, &buyers))
            )
            .is_clean()
        );
    }
}

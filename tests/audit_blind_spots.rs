//! The audit judges each verdict against the state it was decided in. Each test plants, with
//! SQL, a violation that an audit of the final state alone let pass, and expects the audit to
//! report it; a sound sale beside it stays clean.

mod common;

use common::TestEnv;
use seckill::audit::{self, Violation};
use seckill::domain::ItemSpec;
use uuid::Uuid;

/// Stores an outcome as a decider would, with what it saw (`None`: not recorded).
async fn plant_outcome(
    env: &TestEnv,
    item: i64,
    user: &str,
    status: &str,
    order_id: Option<Uuid>,
    seen: Option<(i64, i64)>,
) -> Uuid {
    let request_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outcomes
             (request_id, item_id, user_id, status, order_id, path, quantity, stock_seen, held_seen)
         VALUES ($1, $2, $3, $4, $5, 'queue', 1, $6, $7)",
    )
    .bind(request_id)
    .bind(item)
    .bind(user)
    .bind(status)
    .bind(order_id)
    .bind(seen.map(|s| s.0))
    .bind(seen.map(|s| s.1))
    .execute(&env.pool)
    .await
    .unwrap();
    request_id
}

/// A purchase of one unit, written as the group commit writes it: the order, its outcome, the
/// stock taken and the units counted sold. Returns the order id.
async fn plant_purchase(env: &TestEnv, item: i64, user: &str, limit: i64, units: i64) -> Uuid {
    let (order_id, request_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO orders (id, item_id, user_id, request_id, quantity, per_user_limit)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(item)
    .bind(user)
    .bind(request_id)
    .bind(units)
    .bind(limit)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outcomes (request_id, item_id, user_id, status, order_id, path, quantity)
         VALUES ($1, $2, $3, 'purchased', $4, 'queue', $5)",
    )
    .bind(request_id)
    .bind(item)
    .bind(user)
    .bind(order_id)
    .bind(units)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE items SET stock_remaining = stock_remaining - $2, sold = sold + $2 WHERE id = $1",
    )
    .bind(item)
    .bind(units)
    .execute(&env.pool)
    .await
    .unwrap();
    order_id
}

async fn violations(env: &TestEnv, item: i64) -> Vec<Violation> {
    audit::audit_item(&env.pool, item, true)
        .await
        .unwrap()
        .expect("audited")
        .violations
}

/// (a) A restock used to launder every `sold_out` decided before it: the final state shows
/// units, but the audit exempted earlier refusals. Now the refusal is judged by the stock its
/// decider saw.
#[tokio::test]
async fn a_false_sold_out_before_a_restock_is_caught() {
    let env = TestEnv::new().await;
    let item = env.create_item(10).await;
    plant_outcome(&env, item, "early", "sold_out", None, Some((5, 0))).await;
    seckill::store::restock(&env.pool, item, 3).await.unwrap();
    assert_eq!(
        violations(&env, item).await,
        [Violation::AgainstWhatWasSeen { outcomes: 1 }]
    );

    // The honest one beside it: told sold_out when nothing was left, then restocked.
    let sound = env.create_item(1).await;
    plant_purchase(&env, sound, "first", 1, 1).await;
    plant_outcome(&env, sound, "late", "sold_out", None, Some((0, 0))).await;
    seckill::store::restock(&env.pool, sound, 3).await.unwrap();
    assert!(violations(&env, sound).await.is_empty());
    env.cleanup().await;
}

/// (b) An `already_purchased` decided before the user's order existed used to pass, since the
/// order exists by the end.
#[tokio::test]
async fn already_purchased_before_the_first_purchase_is_caught() {
    let env = TestEnv::new().await;
    let item = env.create_item(10).await;
    plant_outcome(&env, item, "eve", "already_purchased", None, None).await;
    plant_purchase(&env, item, "eve", 1, 1).await;
    assert_eq!(
        violations(&env, item).await,
        [Violation::RefusedBeforeAnyPurchase { outcomes: 1 }]
    );

    // In the right order it is sound.
    let sound = env.create_item(10).await;
    plant_purchase(&env, sound, "eve", 1, 1).await;
    plant_outcome(&env, sound, "eve", "already_purchased", None, Some((9, 1))).await;
    assert!(violations(&env, sound).await.is_empty());
    env.cleanup().await;
}

/// (c) A `purchased` outcome of one user naming another user's order used to pass when the
/// units added up.
#[tokio::test]
async fn a_purchase_naming_another_users_order_is_caught() {
    let env = TestEnv::new().await;
    let spec = ItemSpec::Goods {
        stock: 10,
        per_user_limit: 2,
    };
    let item = seckill::store::create_item_spec(&env.pool, "limit two", &spec)
        .await
        .unwrap()
        .id;
    // Ann's order holds 2 units: her own purchase of 1, and Bob's purchase of 1 naming it.
    let order = plant_purchase(&env, item, "ann", 2, 1).await;
    sqlx::query("UPDATE orders SET quantity = 2 WHERE id = $1")
        .bind(order)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE items SET stock_remaining = stock_remaining - 1, sold = sold + 1 WHERE id = $1",
    )
    .bind(item)
    .execute(&env.pool)
    .await
    .unwrap();
    plant_outcome(&env, item, "bob", "purchased", Some(order), None).await;
    assert_eq!(
        violations(&env, item).await,
        [Violation::PurchasesOfAnotherOrder { outcomes: 1 }]
    );
    env.cleanup().await;
}

/// (d) Outcomes of an item that does not exist were never audited (outcomes have no foreign
/// key to items since migration 0003).
#[tokio::test]
async fn decisions_about_an_item_that_does_not_exist_are_caught() {
    let env = TestEnv::new().await;
    let ghost = 987_654_321;
    plant_outcome(&env, ghost, "gus", "sold_out", None, None).await;
    let one = audit::audit_item(&env.pool, ghost, true)
        .await
        .unwrap()
        .expect("an item named by decisions is audited even when it is gone");
    assert_eq!(
        one.violations,
        [Violation::ItemMissing {
            outcomes: 1,
            requests: 0
        }]
    );
    let all = audit::audit_all(&env.pool, true).await.unwrap();
    assert!(
        all.iter().any(|a| a.item_id == ghost && !a.is_clean()),
        "{all:?}"
    );
    // An item nothing names is simply absent, as before.
    assert!(
        audit::audit_item(&env.pool, ghost + 1, true)
            .await
            .unwrap()
            .is_none()
    );
    env.cleanup().await;
}

/// The decider's own records: a queue-path sale with a restock in the middle stays clean, and
/// every outcome it stored carries what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sale_records_what_it_saw_and_is_clean() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let item = env.create_item(20).await;
    env.publish_direct(&common::requests(item, 30, 25)).await;
    env.wait_for_outcomes(item, 30, std::time::Duration::from_secs(30))
        .await;
    seckill::store::restock(&env.pool, item, 10).await.unwrap();
    env.publish_direct(&common::requests(item, 30, 60)).await;
    env.wait_for_outcomes(item, 60, std::time::Duration::from_secs(30))
        .await;
    let unseen: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outcomes WHERE item_id = $1 AND (stock_seen IS NULL OR held_seen IS NULL)",
    )
    .bind(item)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        unseen, 0,
        "the consumer records what it saw for every decision"
    );
    env.assert_audit_clean(item).await;
    consumer.cancel();
    env.cleanup().await;
}

/// (e) `sold`, kept on the item's row for `GET /items/{id}`, is checked against the orders
/// themselves: purchases counted as the writers count them are clean; an order written without
/// counting it, or a count that drifted, is caught.
#[tokio::test]
async fn a_stored_sold_count_that_disagrees_with_the_orders_is_caught() {
    let env = TestEnv::new().await;
    let item = env.create_item(10).await;
    plant_purchase(&env, item, "ann", 1, 1).await;
    plant_purchase(&env, item, "bob", 1, 1).await;
    assert!(violations(&env, item).await.is_empty());
    sqlx::query("UPDATE items SET sold = sold + 1 WHERE id = $1")
        .bind(item)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        violations(&env, item).await,
        [Violation::SoldCountWrong {
            stored: 3,
            units_sold: 2
        }]
    );

    // An order grown by hand, the stock taken but the unit not counted.
    let limit_two = ItemSpec::Goods {
        stock: 10,
        per_user_limit: 2,
    };
    let other = seckill::store::create_item_spec(&env.pool, "limit two", &limit_two)
        .await
        .unwrap()
        .id;
    let order = plant_purchase(&env, other, "cy", 2, 1).await;
    sqlx::query("UPDATE orders SET quantity = 2 WHERE id = $1")
        .bind(order)
        .execute(&env.pool)
        .await
        .unwrap();
    assert!(
        violations(&env, other)
            .await
            .contains(&Violation::SoldCountWrong {
                stored: 1,
                units_sold: 2
            })
    );
    env.cleanup().await;
}

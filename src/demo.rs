//! `seckill demo`: the whole queue path end to end in one process — API and consumer started
//! in-process, one item created over HTTP, a burst of concurrent buyers (each several times),
//! then the audited result. It is the README's first command until `seckill bench` exists.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Settings};
use crate::audit;
use crate::config::{BrokerArgs, ConsumerArgs, PathArgs, ServeArgs};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Units of the item on sale.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Distinct buyers.
    #[arg(long, default_value_t = 500)]
    pub users: u32,
    /// Purchase requests sent (spread over the buyers, so each tries several times).
    #[arg(long, default_value_t = 2000)]
    pub requests: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// Runs the demo; returns whether the audit is clean.
pub async fn run(
    pool: PgPool,
    broker: BrokerArgs,
    consumer_args: ConsumerArgs,
    args: DemoArgs,
) -> anyhow::Result<bool> {
    let settings = Settings {
        broker,
        api: Some((ServeArgs::loopback(), PathArgs::from_env()?)),
        consumer: Some(consumer_args),
        metrics_bind: None,
        rival_workers: None,
    };
    let app = App::start(pool.clone(), settings, CancellationToken::new()).await?;
    let base = app.api_url().expect("the demo runs an API");
    let http = reqwest::Client::new();
    let item_id = create_item(&http, &base, args.stock).await?;
    println!(
        "item {item_id}: stock {}; sending {} requests from {} users, {} at a time, through the queue",
        args.stock, args.requests, args.users, args.concurrency
    );
    buy(&http, &base, item_id, &args).await;
    let report = settled_audit(&pool, item_id).await?;
    println!("{report}");
    app.stop().await?;
    Ok(report.is_clean())
}

async fn create_item(http: &reqwest::Client, base: &str, stock: i64) -> anyhow::Result<i64> {
    let item: serde_json::Value = http
        .post(format!("{base}/items"))
        .json(&json!({ "name": "demo phone", "stock": stock }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    item["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("the API answered no item id: {item}"))
}

/// The burst: every request waits for its decision (`?wait=`); prints what they were told.
async fn buy(http: &reqwest::Client, base: &str, item_id: i64, args: &DemoArgs) {
    let started = Instant::now();
    let users = args.users.max(1);
    let statuses: Vec<String> = futures::stream::iter(0..args.requests)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/orders?wait=10000");
            async move {
                let body = json!({ "item_id": item_id, "user_id": format!("user-{}", i % users) });
                match http.post(url).json(&body).send().await {
                    Ok(response) => match response.json::<serde_json::Value>().await {
                        Ok(v) => v["status"].as_str().unwrap_or("error").to_string(),
                        Err(_) => "error".to_string(),
                    },
                    Err(_) => "error".to_string(),
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    println!(
        "answered {} requests in {:.2}s ({:.0}/s): {counts:?}",
        args.requests,
        elapsed.as_secs_f64(),
        f64::from(args.requests) / elapsed.as_secs_f64()
    );
}

/// The item's audit once every request is decided: those answered `pending` are still being
/// decided, so it waits for them (bounded) before counting an undecided one as a violation.
async fn settled_audit(pool: &PgPool, item_id: i64) -> anyhow::Result<audit::ItemAudit> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = audit::audit_item(pool, item_id, false)
            .await?
            .ok_or_else(|| anyhow::anyhow!("item {item_id} vanished"))?;
        if report.undecided == 0 || Instant::now() > deadline {
            return audit::audit_item(pool, item_id, true)
                .await?
                .ok_or_else(|| anyhow::anyhow!("item {item_id} vanished"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    };
    let app = App::start(pool.clone(), settings, CancellationToken::new()).await?;
    let base = app.api_url().expect("the demo runs an API");

    let http = reqwest::Client::new();
    let item: serde_json::Value = http
        .post(format!("{base}/items"))
        .json(&json!({ "name": "demo phone", "stock": args.stock }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let item_id = item["id"].as_i64().expect("the API returns the item id");
    println!(
        "item {item_id}: stock {}; sending {} requests from {} users, {} at a time, through the queue",
        args.stock, args.requests, args.users, args.concurrency
    );

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

    // Requests answered `pending` are still being decided: wait (bounded) for them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = audit::audit_item(&pool, item_id, false)
            .await?
            .expect("the item exists");
        if report.undecided == 0 || Instant::now() > deadline {
            break audit::audit_item(&pool, item_id, true)
                .await?
                .expect("the item exists");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{report}");

    app.stop().await?;
    Ok(report.is_clean())
}

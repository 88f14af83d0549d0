//! The composition root: what `App::start` refuses, and that `stop` ends every part it started.

mod common;

use std::time::Duration;

use common::TestEnv;
use seckill::app::{App, Settings};
use seckill::config::ServeArgs;
use tokio_util::sync::CancellationToken;

fn api_settings(env: &TestEnv, serve: ServeArgs) -> Settings {
    Settings {
        broker: env.broker.clone(),
        api: Some((serve, env.path_args())),
        consumer: Some(env.consumer_args()),
        metrics_bind: None,
        rival_workers: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_before_anything_starts() {
    let env = TestEnv::new().await;
    let public = ServeArgs {
        bind: "0.0.0.0:0".parse().unwrap(),
        ..ServeArgs::loopback()
    };
    let refused = App::start(
        env.pool.clone(),
        api_settings(&env, public),
        Default::default(),
    )
    .await
    .err()
    .expect("a public bind without a token is refused");
    assert!(
        refused.to_string().contains("without SECKILL_ADMIN_TOKEN"),
        "{refused}"
    );

    let mut consumer = env.consumer_args();
    consumer.prefetch = consumer.batch_size_max - 1;
    let settings = Settings {
        consumer: Some(consumer),
        ..api_settings(&env, ServeArgs::loopback())
    };
    let refused = App::start(env.pool.clone(), settings, Default::default())
        .await
        .err()
        .expect("a prefetch below the batch size is refused");
    assert!(refused.to_string().contains("prefetch"), "{refused}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = ServeArgs {
        bind: taken.local_addr().unwrap(),
        ..ServeArgs::loopback()
    };
    let refused = App::start(
        env.pool.clone(),
        api_settings(&env, busy),
        Default::default(),
    )
    .await
    .err()
    .expect("an address in use is an error");
    assert!(
        refused.to_string().contains("cannot listen on"),
        "{refused}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_every_part_and_the_port_closes() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let app = App::start(
        env.pool.clone(),
        api_settings(&env, ServeArgs::loopback()),
        shutdown.clone(),
    )
    .await
    .expect("the app starts");
    let addr = app.api_addr().expect("an API");
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("every task ends")
        .expect("no part failed");
    assert!(shutdown.is_cancelled());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after stop"
    );
    env.cleanup().await;
}

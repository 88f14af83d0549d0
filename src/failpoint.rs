//! Crash switches for the crash tests: `SECKILL_FAILPOINT=<step>[:<n>]` makes the process abort
//! (like `kill -9`: no unwinding, no cleanup) the `n`-th time (default 1st) it reaches `<step>`.
//! Steps on the consumer's path: `before_decide`, `before_commit`, `after_commit` (committed,
//! not acked), `after_ack` (acked, no reply sent). Unset, a check costs one atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    step: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SECKILL_FAILPOINT").ok()?;
            let (step, nth) = match spec.split_once(':') {
                Some((step, n)) => (step.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                step,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if the armed failpoint is `step` and this is its n-th hit.
pub fn hit(step: &str) {
    if let Some(armed) = armed()
        && armed.step == step
        && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth
    {
        eprintln!("failpoint {step} reached: aborting");
        std::process::abort();
    }
}

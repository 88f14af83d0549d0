//! Crash switches for the crash tests: `SECKILL_FAILPOINT=<step>[:<n>][:stop]` makes the process
//! abort (like `kill -9`: no unwinding, no cleanup) the `n`-th time (default 1st) it reaches
//! `<step>` — or, with `:stop`, freeze itself with SIGSTOP there (a paused process: it resumes
//! where it was on SIGCONT, which is how the fencing test makes a zombie consumer).
//! Steps on the consumer's path: `before_decide`, `before_commit`, `after_commit` (committed,
//! not acked), `after_ack` (acked, no reply sent); on the API's: `after_publish_confirmed` (the
//! broker holds the request, the client was not answered); on the `redis-stream` writer's:
//! `stream_after_commit` (a batch committed, its entries not acknowledged). Unset, a check costs one atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    step: String,
    nth: u64,
    stop: bool,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| parse(&std::env::var("SECKILL_FAILPOINT").ok()?))
        .as_ref()
}

fn parse(spec: &str) -> Option<Armed> {
    let mut parts = spec.split(':');
    let step = parts.next()?.to_string();
    let nth = parts.next().map_or(Some(1), |n| n.parse().ok())?;
    let stop = match parts.next() {
        None => false,
        Some("stop") => true,
        Some(_) => return None,
    };
    Some(Armed {
        step,
        nth,
        stop,
        hits: AtomicU64::new(0),
    })
}

/// Aborts (or freezes) the process if the armed failpoint is `step` and this is its n-th hit.
pub fn hit(step: &str) {
    if let Some(armed) = armed()
        && armed.step == step
        && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth
    {
        if armed.stop {
            eprintln!("failpoint {step} reached: stopping (SIGSTOP) until SIGCONT");
            // The standard library cannot signal its own process; kill(1) can.
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
            eprintln!("failpoint {step}: continued");
        } else {
            eprintln!("failpoint {step} reached: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn specs() {
        let a = parse("after_commit").unwrap();
        assert_eq!((a.step.as_str(), a.nth, a.stop), ("after_commit", 1, false));
        let a = parse("before_commit:3:stop").unwrap();
        assert_eq!((a.step.as_str(), a.nth, a.stop), ("before_commit", 3, true));
        assert!(parse("x:notanumber").is_none());
        assert!(parse("x:2:explode").is_none());
    }
}

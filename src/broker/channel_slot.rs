//! A channel to the broker held for a publishing component: opened on first use, opened again
//! after the broker went away — at most once per [`RECONNECT_PAUSE`], so an outage costs each
//! request a fast 503 rather than a connection attempt — and renewed after a refusal. The
//! publisher's link and the `redis-mq` path's queue each hold one; what they set up on a fresh
//! channel (topology, confirm mode, a reply consumer) is theirs, passed in as `open`.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::{Channel, Connection};

/// Shortest pause between two attempts to reconnect, and the youngest a channel that refused a
/// publish may be to be renewed.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// An open channel and the connection it lives on.
struct Open {
    /// Kept so the connection lives as long as the channel.
    _connection: Connection,
    channel: Channel,
    /// When it was opened: a channel that refused a publish is renewed at most once per
    /// [`RECONNECT_PAUSE`] (see [`ChannelSlot::renew_after_refusal`]).
    opened_at: Instant,
}

pub struct ChannelSlot {
    /// Who holds it, in its logs and in `seckill_broker_reconnects_total{component}`.
    component: &'static str,
    open: tokio::sync::RwLock<Option<Open>>,
    /// When the last attempt to open failed, to pace the next one.
    last_failure: Mutex<Option<Instant>>,
    /// Whether a channel was ever open: a later open is a reconnect.
    opened_before: AtomicBool,
}

impl ChannelSlot {
    /// An empty slot: the first [`channel`](Self::channel) opens it.
    pub fn new(component: &'static str) -> Self {
        Self {
            component,
            open: tokio::sync::RwLock::new(None),
            last_failure: Mutex::new(None),
            opened_before: AtomicBool::new(false),
        }
    }

    /// True when the channel is open.
    pub async fn is_connected(&self) -> bool {
        matches!(&*self.open.read().await, Some(open) if open.channel.status().connected())
    }

    /// Drops `refused_on` if it is still the slot's channel and older than [`RECONNECT_PAUSE`],
    /// so the next publish opens a fresh one (a queue that is really full costs one reconnect a
    /// second); true when it did.
    pub async fn renew_after_refusal(&self, refused_on: &Channel) -> bool {
        let mut slot = self.open.write().await;
        let stale = slot.as_ref().is_some_and(|open| {
            open.channel.id() == refused_on.id() && open.opened_at.elapsed() >= RECONNECT_PAUSE
        });
        if stale {
            slot.take();
        }
        stale
    }

    /// The open channel, or one `open` makes when there is none (or it broke). `Err` with why
    /// not, safe to show: "reconnecting" while the last failure is younger than
    /// [`RECONNECT_PAUSE`], else the error of this attempt.
    pub async fn channel<F, Fut>(&self, open: F) -> Result<Channel, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<(Connection, Channel)>>,
    {
        if let Some(open) = &*self.open.read().await
            && open.channel.status().connected()
        {
            return Ok(open.channel.clone());
        }
        let mut slot = self.open.write().await;
        if let Some(open) = &*slot
            && open.channel.status().connected()
        {
            return Ok(open.channel.clone());
        }
        if slot.take().is_some() {
            tracing::warn!(
                "{} lost its broker connection; reconnecting",
                self.component
            );
        }
        {
            let last = self.last_failure.lock().expect("last_failure lock");
            if last.is_some_and(|at| at.elapsed() < RECONNECT_PAUSE) {
                return Err("reconnecting".into());
            }
        }
        match open().await {
            Ok((connection, channel)) => {
                if self.opened_before.swap(true, Ordering::Relaxed) {
                    crate::metrics::get()
                        .broker_reconnects
                        .with_label_values(&[self.component])
                        .inc();
                    tracing::info!("{} reconnected to the broker", self.component);
                }
                *slot = Some(Open {
                    _connection: connection,
                    channel: channel.clone(),
                    opened_at: Instant::now(),
                });
                Ok(channel)
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "{} cannot reach the broker", self.component);
                *self.last_failure.lock().expect("last_failure lock") = Some(Instant::now());
                Err(format!("{e:#}"))
            }
        }
    }
}

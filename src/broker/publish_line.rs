//! One partition's publishing line: group commit, applied to publishing.
//!
//! The broker's cost is per message, not per byte (one request per message caps this machine's
//! RabbitMQ near 10,000 requests/s; 32 per message carry over 200,000). So a line keeps up to
//! `publish_in_flight_max` messages awaiting their confirm, and the requests that arrive while
//! they do go out together as the next message, bounded by a count and a byte size. An idle line
//! sends a lone request at once, as a single-request message: no delay is ever added to wait
//! for company, and messages grow with the load.
//!
//! Each request is answered only with the broker's verdict on the message that carries it: a
//! confirm accepts all of its requests; a nack, a return or a lost channel fails exactly those,
//! and nothing else.
//!
//! ```text
//!   publish() ─► queue ─► [wait for an in-flight slot] ─► take what queued up (≤ count, ≤ bytes)
//!                          ─► basic_publish (in order) ─► confirm ─► each request's answer
//! ```

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::link::{Link, PublishError};
use super::message::{self, DIRECT_REPLY_TO};
use crate::config::PublishArgs;
use crate::domain::OrderRequest;

/// Most requests waiting in one line; past it callers wait (back-pressure, bounded memory).
const QUEUE_LEN_MAX: usize = 10_000;
/// Longest a message's confirm is awaited. Past it (a broker that blocked publishers on a memory
/// or disk alarm, a confirm that never comes) its requests are answered "not confirmed" — they
/// stay pending and may still be decided — and its slot is freed, so a stuck confirm never stops
/// its partition's line for good.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A request waiting in a line, already encoded.
struct Queued {
    request_id: Uuid,
    body: Vec<u8>,
    /// Its client waits for the decision: the message asks for replies.
    reply: bool,
    answer: oneshot::Sender<Result<(), PublishError>>,
}

/// A handle to one partition's line; the line's task ends when the handle is dropped.
pub(super) struct Line {
    queue: mpsc::Sender<Queued>,
}

impl Line {
    /// Starts the line's task (inside the tokio runtime).
    pub fn start(link: Arc<Link>, partition: u16, bounds: PublishArgs) -> Self {
        let (queue, queued) = mpsc::channel(QUEUE_LEN_MAX);
        tokio::spawn(run(link, partition, bounds, queued));
        Self { queue }
    }

    /// Queues the request and waits for the broker's verdict on the message that carries it.
    pub async fn publish(&self, request: &OrderRequest, reply: bool) -> Result<(), PublishError> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            request_id: request.request_id,
            body: message::encode(request),
            reply,
            answer,
        };
        let stopped = "the publisher has stopped";
        // Not queued: certainly not handed over.
        (self.queue.send(queued).await).map_err(|_| PublishError::Unavailable(stopped.into()))?;
        // Queued but not answered: it may have been handed over, so it may still be decided.
        answered
            .await
            .map_err(|_| PublishError::Unconfirmed(stopped.into()))?
    }
}

/// The line's loop: one message per turn, once an in-flight slot is free.
async fn run(
    link: Arc<Link>,
    partition: u16,
    bounds: PublishArgs,
    mut queued: mpsc::Receiver<Queued>,
) {
    let in_flight = Arc::new(Semaphore::new(usize::from(bounds.publish_in_flight_max)));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queued.recv().await {
                Some(first) => first,
                None => return, // the publisher was dropped
            },
        };
        let slot = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Taken after the slot: whatever queued up while every slot was busy joins this message.
        let (batch, next) = take_queued(first, &mut queued, &bounds);
        carried = next;
        send(&link, partition, batch, slot).await;
    }
}

/// `first` and what else is queued now, up to the count and byte bounds; the request that would
/// pass the byte bound is handed back to start the next message.
fn take_queued(
    first: Queued,
    queued: &mut mpsc::Receiver<Queued>,
    bounds: &PublishArgs,
) -> (Vec<Queued>, Option<Queued>) {
    let count_max = usize::from(bounds.publish_batch_max);
    let bytes_max = bounds.publish_batch_bytes_max as usize;
    // The body: `[`, the elements with a comma between each two, `]`.
    let mut bytes = first.body.len() + 2;
    let mut batch = vec![first];
    while batch.len() < count_max {
        let Ok(next) = queued.try_recv() else {
            break;
        };
        if bytes + 1 + next.body.len() > bytes_max {
            return (batch, Some(next));
        }
        bytes += 1 + next.body.len();
        batch.push(next);
    }
    (batch, None)
}

/// Hands the message to the broker (in the line's order), then waits for its confirm apart, so
/// the line goes on filling the next message meanwhile. The slot is held until the confirm.
async fn send(link: &Arc<Link>, partition: u16, batch: Vec<Queued>, slot: OwnedSemaphorePermit) {
    let channel = match link.channel().await {
        Ok(channel) => channel,
        Err(e) => return answer(batch, Err(e)),
    };
    let (body, props) = encode(&batch);
    let message_id = props.message_id().clone();
    let topology = link.topology();
    let handed = channel
        .basic_publish(
            topology.orders_exchange().into(),
            topology.routing_key(partition).into(),
            // mandatory: an unroutable message comes back instead of vanishing.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            props,
        )
        .await;
    let confirm = match handed {
        Ok(confirm) => confirm,
        Err(e) => return answer(batch, Err(PublishError::Unavailable(e.to_string()))),
    };
    let link = Arc::clone(link);
    tokio::spawn(async move {
        let verdict = verdict(&link, &channel, confirm, message_id).await;
        drop(slot);
        answer(batch, verdict);
    });
}

/// The message for a batch: a lone request as the single-request body it always was, several
/// as a batch body. Replies are asked for when any of its clients waits. Its `message_id` (the
/// request's id, or a fresh one for a batch) is what a returned message is matched by.
fn encode(batch: &[Queued]) -> (Vec<u8>, BasicProperties) {
    let reply_to = batch.iter().any(|q| q.reply).then_some(DIRECT_REPLY_TO);
    match batch {
        [one] => (
            one.body.clone(),
            message::request_properties(one.request_id, reply_to),
        ),
        many => (
            message::encode_batch(many.iter().map(|q| q.body.as_slice())),
            message::batch_properties(reply_to).with_message_id(Uuid::now_v7().to_string().into()),
        ),
    }
}

/// The broker's verdict on one message. A returned message is this one's only if its
/// `message_id` says so: lapin hands a return to whichever confirm completes next, which with a
/// `multiple` ack may be another message of the channel — then nothing is known of this one.
async fn verdict(
    link: &Link,
    channel: &Channel,
    confirm: PublisherConfirm,
    message_id: Option<lapin::types::ShortString>,
) -> Result<(), PublishError> {
    let Ok(confirmed) = tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await else {
        tracing::warn!(
            timeout_s = CONFIRM_TIMEOUT.as_secs(),
            "no confirm from the broker; its requests stay pending"
        );
        return Err(PublishError::Unconfirmed("no confirm in time".into()));
    };
    match confirmed {
        Ok(Confirmation::Ack(None)) => {
            crate::failpoint::hit("after_publish_confirmed");
            Ok(())
        }
        Ok(Confirmation::Ack(Some(returned))) => {
            if message_id.is_some() && returned.delivery.properties.message_id() == &message_id {
                Err(PublishError::Unroutable)
            } else {
                Err(PublishError::Unconfirmed(
                    "the broker returned a message that may not be this one".into(),
                ))
            }
        }
        Ok(Confirmation::Nack(_)) => {
            link.renew_after_refusal(channel).await;
            Err(PublishError::Refused)
        }
        Ok(Confirmation::NotRequested) => unreachable!("the channel is in confirm mode"),
        Err(e) => Err(PublishError::Unconfirmed(e.to_string())),
    }
}

/// Gives every request of the message the message's verdict, and counts them.
fn answer(batch: Vec<Queued>, verdict: Result<(), PublishError>) {
    let label = match &verdict {
        Ok(()) => "confirmed",
        Err(PublishError::Refused) => "refused",
        Err(PublishError::Unroutable) => "unroutable",
        Err(PublishError::Unavailable(_)) => "unavailable",
        Err(PublishError::Unconfirmed(_)) => "unconfirmed",
    };
    let metrics = crate::metrics::get();
    metrics
        .publishes
        .with_label_values(&[label])
        .inc_by(batch.len() as u64);
    metrics.publish_batch_size.observe(batch.len() as f64);
    for queued in batch {
        let _ = queued.answer.send(verdict.clone());
    }
}

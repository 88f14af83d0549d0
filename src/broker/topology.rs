//! Names and declarations of everything seckill keeps on the broker. Producers and consumers
//! both declare it (declaring is idempotent), so either may start first.
//!
//! ```text
//! {prefix}.orders (direct exchange) --"<n>"--> {prefix}.orders.p<n>   n = item_id mod partitions
//! {prefix}.dead   (fanout exchange) ---------> {prefix}.dead           rejected/undecodable messages
//! (default exchange) ------------------------> {prefix}.redis-mq       the redis-mq rival path
//! ```
//!
//! `{prefix}.redis-mq` belongs to the `redis-mq` rival path (see `crate::paths::redis_mq`):
//! one durable queue read by competing consumers, declared only by that path and its consumers.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::{BrokerArgs, QueueType};
use crate::domain::ItemId;

/// How every exchange is declared.
const DURABLE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    durable: true,      // survives a broker restart
    auto_delete: false, // bindings come and go with consumers; the exchange stays
    internal: false,    // seckill publishes to it directly
    passive: false,     // create it when missing, not merely check
    nowait: false,      // a failed declaration is an error here, not later
};

/// How every queue is declared.
const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    durable: true,      // the queue survives a broker restart (messages are persistent)
    exclusive: false,   // several daemons consume it: one active, the others standby
    auto_delete: false, // a queue of accepted requests must outlive its consumers
    passive: false,     // create it when missing, not merely check
    nowait: false,      // a failed declaration is an error here, not later
};

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    partitions: u16,
    queue_length_max: u32,
    queue_type: QueueType,
}

impl Topology {
    pub fn new(args: &BrokerArgs) -> Self {
        Self {
            prefix: args.queue_prefix.clone(),
            partitions: args.partitions,
            queue_length_max: args.queue_length_max,
            queue_type: args.queue_type,
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The partition an item always lands on. Plain modulo, so a producer in any language can
    /// compute it.
    pub fn partition_of(&self, item_id: ItemId) -> u16 {
        item_id.rem_euclid(i64::from(self.partitions)) as u16
    }

    pub fn orders_exchange(&self) -> String {
        format!("{}.orders", self.prefix)
    }

    /// Routing key of a partition on the orders exchange.
    pub fn routing_key(&self, partition: u16) -> String {
        partition.to_string()
    }

    pub fn partition_queue(&self, partition: u16) -> String {
        format!("{}.orders.p{partition}", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Fanout exchange of item announcements (sold out, restocked): see [`super::item_events`].
    pub fn item_events_exchange(&self) -> String {
        format!("{}.item-events", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The one queue of the `redis-mq` rival path, published to through the default exchange.
    pub fn redis_mq_queue(&self) -> String {
        format!("{}.redis-mq", self.prefix)
    }

    /// Declares the `redis-mq` path's queue and the dead letters it rejects into (idempotent).
    /// Competing consumers, not single-active: any consumer takes any message, in no order.
    pub async fn declare_redis_mq(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_dead_letters(channel).await?;
        let mut args = FieldTable::default();
        // Bounded like the partition queues: past it a publish is refused and the API answers
        // 503, rather than the broker dropping the earliest buyers.
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongUInt(self.queue_length_max),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args.insert("x-queue-version".into(), AMQPValue::ShortShortUInt(2));
        // A message a consumer rejects (it cannot be decoded) is kept where operators look,
        // not redelivered.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        channel
            .queue_declare(self.redis_mq_queue().into(), DURABLE_QUEUE, args)
            .await
            .map(|_| ())
    }

    /// Declares exchanges and queues (idempotent). Every option is spelled out on purpose.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_dead_letters(channel).await?;
        channel
            .exchange_declare(
                self.orders_exchange().into(),
                ExchangeKind::Direct,
                DURABLE_EXCHANGE,
                FieldTable::default(),
            )
            .await?;
        // Each listener binds a queue of its own to it (see `item_events::listen`).
        channel
            .exchange_declare(
                self.item_events_exchange().into(),
                ExchangeKind::Fanout,
                DURABLE_EXCHANGE,
                FieldTable::default(),
            )
            .await?;
        for partition in 0..self.partitions {
            self.declare_partition(channel, partition).await?;
        }
        Ok(())
    }

    /// The dead-letter exchange and the queue that keeps what reaches it.
    async fn declare_dead_letters(&self, channel: &Channel) -> lapin::Result<()> {
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                DURABLE_EXCHANGE,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                DURABLE_QUEUE,
                self.dead_letter_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// One partition's queue, bound to the orders exchange by its routing key.
    async fn declare_partition(&self, channel: &Channel, partition: u16) -> lapin::Result<()> {
        channel
            .queue_declare(
                self.partition_queue(partition).into(),
                DURABLE_QUEUE,
                self.partition_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.partition_queue(partition).into(),
                self.orders_exchange().into(),
                self.routing_key(partition).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Arguments of every partition queue (the benchmark's broker ceiling uses the same).
    /// The dead-letter queue is of the partition queues' kind: on a cluster it must be
    /// replicated too, or the loss of its one node makes every client's declaration fail (a
    /// classic queue's home node being down is `NOT_FOUND`) and a dead letter has nowhere to go.
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }

    pub fn partition_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // One consumer at a time reads the queue, in order: this is what serializes an item.
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        // A bounded queue that refuses new publishes when full (the API answers 503) instead of
        // dropping its head — the earliest buyers.
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongUInt(self.queue_length_max),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        match self.queue_type {
            // Classic queue storage v2 (RabbitMQ 3.10+): cheaper persistent messages than v1.
            QueueType::Classic => {
                args.insert("x-queue-version".into(), AMQPValue::ShortShortUInt(2));
            }
            // Replicated by Raft over the cluster's nodes; always durable.
            QueueType::Quorum => {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
            }
        }
        // Anything the broker itself dead-letters goes where operators already look.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args
    }

    /// Removes everything `declare` made, messages included (tests and `--cleanup` use it).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for partition in 0..self.partitions {
            channel
                .queue_delete(
                    self.partition_queue(partition).into(),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        channel
            .queue_delete(
                self.dead_letter_queue().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
        // Deleting a queue that was never declared is a no-op for the broker.
        channel
            .queue_delete(self.redis_mq_queue().into(), QueueDeleteOptions::default())
            .await?;
        for exchange in [
            self.orders_exchange(),
            self.dead_letter_exchange(),
            self.item_events_exchange(),
        ] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(partitions: u16) -> Topology {
        Topology {
            prefix: "t".into(),
            partitions,
            queue_length_max: 10,
            queue_type: QueueType::Classic,
        }
    }

    #[test]
    fn an_item_always_lands_on_the_same_partition_and_all_partitions_are_used() {
        let t = topology(8);
        let mut seen = [0u32; 8];
        for item in 1..=800 {
            let p = t.partition_of(item);
            assert_eq!(p, t.partition_of(item));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n == 100), "{seen:?}");
        assert_eq!(t.partition_of(-3), 5, "negative ids still map into range");
        assert_eq!(t.partition_queue(3), "t.orders.p3");
    }
}

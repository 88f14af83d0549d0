//! A consumer batch: the deliveries taken from one partition queue, and the requests they carry,
//! sorted by what becomes of them.
//!
//! A delivery carries one request, or a batch message of many (see [`crate::broker::message`]).
//! The consumer's batch is bounded by requests, not deliveries, and takes whole deliveries only:
//! a batch message is decided, committed and acked with the rest of its consumer batch, never
//! half. A bad element of a batch message is set aside alone, with its place in the message, to
//! be dead-lettered; the other elements are decided.

use std::collections::HashMap;

use lapin::message::Delivery;

use crate::broker::message::{self, Decoded, ElementOf};
use crate::broker::topology::Topology;
use crate::domain::{ItemId, OrderRequest};

/// Where a request came from: its delivery (by index in the batch) and, for an element of a
/// batch message, its place in that message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Place {
    pub delivery: usize,
    pub element: Option<ElementOf>,
}

/// A message, or an element of one, that cannot be decided: it goes to the dead letters.
pub(super) struct Reject {
    pub place: Place,
    pub reason: String,
    /// An element's own body; `None`: the delivery's whole body.
    pub body: Option<Vec<u8>>,
}

/// A batch's deliveries, sorted by what becomes of them.
#[derive(Default)]
pub(super) struct Batch {
    pub deliveries: Vec<Delivery>,
    /// The requests to decide, in delivery order (and element order within a delivery). Once
    /// the batch is committed, only those decided are left, one per answer.
    pub requests: Vec<(Place, OrderRequest)>,
    /// What to dead-letter, with the reason: undecodable, or undecidable.
    pub rejects: Vec<Reject>,
    /// Requests the deliveries carry, decodable or not: what the batch's size is bounded by.
    elements: usize,
}

impl Batch {
    /// Adds a delivery of the queue of `partition`, decoding what it carries. A request for an
    /// item of another partition is refused: its item has another decider, and deciding it here
    /// too could sell the same stock twice (a producer routed it wrongly).
    pub fn take(&mut self, delivery: Delivery, topology: &Topology, partition: u16) {
        let index = self.deliveries.len();
        let whole = Place {
            delivery: index,
            element: None,
        };
        match message::decode(&delivery.properties, &delivery.data) {
            Ok(Decoded::One(request)) => {
                self.elements += 1;
                self.admit(whole, request, topology, partition);
            }
            Ok(Decoded::Batch(elements)) => {
                let count = elements.len();
                self.elements += count;
                for (at, element) in elements.into_iter().enumerate() {
                    let place = Place {
                        delivery: index,
                        element: Some(ElementOf {
                            index: at,
                            elements: count,
                        }),
                    };
                    match element {
                        Ok(request) => self.admit(place, request, topology, partition),
                        Err(refused) => self.reject(place, refused.reason.0, Some(refused.body)),
                    }
                }
            }
            Err(reason) => {
                self.elements += 1;
                self.reject(whole, reason.0, None);
            }
        }
        self.deliveries.push(delivery);
    }

    /// Queues a decodable request to be decided, unless its item is another partition's.
    fn admit(&mut self, place: Place, request: OrderRequest, topology: &Topology, partition: u16) {
        let belongs_to = topology.partition_of(request.item_id);
        if belongs_to == partition {
            self.requests.push((place, request));
        } else {
            let reason = format!(
                "item {} belongs to partition {belongs_to}, not {partition}: published with the wrong routing key",
                request.item_id
            );
            self.reject(place, reason, element_body(place, &request));
        }
    }

    fn reject(&mut self, place: Place, reason: String, body: Option<Vec<u8>>) {
        self.rejects.push(Reject {
            place,
            reason,
            body,
        });
    }

    /// Requests carried by the deliveries taken so far, decodable or not.
    pub fn elements(&self) -> usize {
        self.elements
    }

    pub fn redelivered(&self) -> usize {
        self.deliveries.iter().filter(|d| d.redelivered).count()
    }

    pub fn last_tag(&self) -> u64 {
        let last = self.deliveries.last().expect("a batch is never empty");
        last.delivery_tag
    }

    pub fn item_ids(&self) -> impl Iterator<Item = ItemId> + '_ {
        self.requests.iter().map(|(_, r)| r.item_id)
    }

    /// Moves the requests that could not be decided to the dead letters, leaving the decided
    /// ones, in order.
    pub fn set_aside(&mut self, mut undecidable: HashMap<Place, String>) {
        let rejects = &mut self.rejects;
        self.requests
            .retain(|(place, request)| match undecidable.remove(place) {
                Some(reason) => {
                    rejects.push(Reject {
                        place: *place,
                        reason,
                        body: element_body(*place, request),
                    });
                    false
                }
                None => true,
            });
    }

    /// The body and properties a reject is dead-lettered with: its own body (an element's, or
    /// the whole message's) and the original properties, plus the reason and, for an element,
    /// its place.
    pub fn dead_letter<'a>(&'a self, reject: &'a Reject) -> (&'a [u8], lapin::BasicProperties) {
        let delivery = &self.deliveries[reject.place.delivery];
        let body = reject.body.as_deref().unwrap_or(&delivery.data);
        let props = message::dead_letter_properties(
            &delivery.properties,
            &reject.reason,
            reject.place.element,
        );
        (body, props)
    }
}

/// What an element of a batch message is dead-lettered with: the request alone. `None` for a
/// single-request message, which is dead-lettered whole.
fn element_body(place: Place, request: &OrderRequest) -> Option<Vec<u8>> {
    place.element.map(|_| message::encode(request))
}

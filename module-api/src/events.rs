//! Events: a module publishes to a topic, and every module subscribed to it (and the base's own
//! subscribers) receives it, through the base. Topics are shared by all modules.
//!
//! ```ignore
//! use pedestal_module_api::events;
//! let mut orders = events::subscribe("orders").await?;
//! tokio::task::spawn_local(async move {
//!     while let Some(event) = orders.recv().await { /* event.data, event.publisher */ }
//! });
//! events::publish("orders", &serde_json::json!({"id": 7})).await?;
//! ```
//!
//! Delivery is at most once and asynchronous: `publish` returns once the event is queued for
//! each subscription (it returns how many), each subscriber receives events in the order they
//! were published, and a subscriber whose queue is full (it does not keep up) or that stops
//! loses the events it did not take. A subscription ends when it is dropped or its instance
//! stops.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    calls,
    service::{Push, Service},
    wire::{SpiError, decode, encode},
};

/// Modules publish and subscribe through `pedestal.events`; the base pushes `deliver`.
pub(crate) const SERVICE: Service = Service {
    name: "pedestal.events",
    pushes: &[Push { method: "deliver", handle: deliver }],
    reset: close_all,
};
/// Events a subscription holds before newer ones are dropped.
pub const QUEUE: usize = 1024;

static SUBSCRIPTIONS: Mutex<BTreeMap<u64, mpsc::Sender<Event>>> = Mutex::new(BTreeMap::new());
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn subscriptions() -> MutexGuard<'static, BTreeMap<u64, mpsc::Sender<Event>>> {
    SUBSCRIPTIONS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The topic it was published to.
    pub topic: String,
    /// Who published it: `name@version` of a module, or `base`.
    pub publisher: String,
    /// What was published.
    pub data: Value,
}

impl Event {
    /// The data as a `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, SpiError> {
        serde_json::from_value(self.data.clone())
            .map_err(|e| SpiError::new(SpiError::BAD_PAYLOAD, e.to_string()))
    }
}

/// The wire form of a subscription request and of a delivery.
#[derive(Serialize, Deserialize)]
struct Delivery {
    subscription: u64,
    #[serde(flatten)]
    event: Event,
}

/// Publishes `data` to `topic`; returns how many subscriptions it was queued for.
pub async fn publish<T: Serialize + ?Sized>(topic: &str, data: &T) -> Result<usize, SpiError> {
    let payload = encode(&(topic, data))?;
    decode(&calls::call(SERVICE.name, "", "publish", "", &payload).await?)
}

/// Subscribes to `topic`: the events published to it from now on.
pub async fn subscribe(topic: &str) -> Result<Subscription, SpiError> {
    let id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
    let (sender, receiver) = mpsc::channel(QUEUE);
    subscriptions().insert(id, sender);
    let subscription = Subscription { id, topic: topic.to_owned(), receiver };
    // Dropping `subscription` on an error unregisters it.
    calls::call(SERVICE.name, "", "subscribe", "", &encode(&(topic, id))?).await?;
    Ok(subscription)
}

/// Events of one topic, in the order they were published.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    topic: String,
    receiver: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` once the instance is stopping.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        subscriptions().remove(&self.id);
        if let Ok(payload) = encode(&(self.topic.as_str(), self.id)) {
            calls::notify(SERVICE.name, "unsubscribe", &payload);
        }
    }
}

/// Events dropped because a subscription's queue was full (since the library was loaded).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Takes an event the base delivered (`pedestal.events`/`deliver`).
fn deliver(payload: &[u8]) -> Result<(), SpiError> {
    let delivery: Delivery = decode(payload)?;
    let sender = subscriptions().get(&delivery.subscription).cloned();
    match sender {
        Some(sender) => {
            if sender.try_send(delivery.event).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        None => Err(SpiError::new("NOT_SUBSCRIBED", "no such subscription (it was dropped)")),
    }
}

/// Ends every subscription (the instance is stopping): receivers see the end of their stream.
fn close_all() {
    subscriptions().clear();
}

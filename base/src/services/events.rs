//! Publish and subscribe between modules (and the base's own code), through the base.
//!
//! A subscription is `(instance, the module's subscription id)` or a channel of the base's
//! own. Publishing queues the event on each subscribed instance as a `pedestal.events`/`deliver`
//! SPI call without waiting for it (at most once: a subscriber that stops, or whose queue in the
//! module is full, loses it); the module's runtime hands it to the subscription's queue.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use pedestal_module_api::{
    SpiError,
    events::Event,
    spi::{decode, encode},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Call, Service};
use crate::{instance::Instance, sync::lock};

/// Events a base subscription holds before newer ones are dropped.
const BASE_QUEUE: usize = 1024;

enum Subscriber {
    Module { instance: Weak<Instance>, subscription: u64 },
    Base(mpsc::Sender<Event>),
}

impl Subscriber {
    fn is_gone(&self) -> bool {
        match self {
            Self::Module { instance, .. } => instance.upgrade().is_none_or(|i| !i.accepts_notifications()),
            Self::Base(sender) => sender.is_closed(),
        }
    }
}

/// The topics and their subscribers.
#[derive(Default)]
pub struct Events {
    topics: Mutex<HashMap<String, Vec<Subscriber>>>,
    published: AtomicU64,
    delivered: AtomicU64,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("published", &self.published).finish_non_exhaustive()
    }
}

/// Refuses an empty or unreasonable topic name.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 256 || topic.chars().any(char::is_control) {
        return Err(format!("{topic:?} is not a topic (1 to 256 printable characters)"));
    }
    Ok(())
}

impl Events {
    /// Publishes `data` to `topic` as `publisher` (`name@version`, or `base`); returns how many
    /// subscriptions it was queued for.
    pub fn publish(&self, topic: &str, publisher: &str, data: Value) -> usize {
        self.published.fetch_add(1, Ordering::Relaxed);
        let mut topics = lock(&self.topics);
        let Some(subscribers) = topics.get_mut(topic) else { return 0 };
        subscribers.retain(|s| !s.is_gone());
        let mut queued = 0;
        for subscriber in subscribers.iter() {
            match subscriber {
                Subscriber::Module { instance, subscription } => {
                    let Some(instance) = instance.upgrade() else { continue };
                    let delivery = json!({
                        "subscription": subscription,
                        "topic": topic,
                        "publisher": publisher,
                        "data": data,
                    });
                    if instance.notify("pedestal.events", "deliver", delivery.to_string().into_bytes()) {
                        queued += 1;
                    }
                }
                Subscriber::Base(sender) => {
                    let event = Event {
                        topic: topic.to_owned(),
                        publisher: publisher.to_owned(),
                        data: data.clone(),
                    };
                    if sender.try_send(event).is_ok() {
                        queued += 1;
                    }
                }
            }
        }
        if subscribers.is_empty() {
            topics.remove(topic);
        }
        self.delivered.fetch_add(queued as u64, Ordering::Relaxed);
        queued
    }

    /// Subscribes the base's own code to `topic`.
    pub fn subscribe(&self, topic: &str) -> mpsc::Receiver<Event> {
        let (sender, receiver) = mpsc::channel(BASE_QUEUE);
        lock(&self.topics).entry(topic.to_owned()).or_default().push(Subscriber::Base(sender));
        receiver
    }

    pub(crate) fn subscribe_instance(&self, topic: &str, instance: &Arc<Instance>, subscription: u64) {
        let subscriber = Subscriber::Module { instance: Arc::downgrade(instance), subscription };
        lock(&self.topics).entry(topic.to_owned()).or_default().push(subscriber);
    }

    pub(crate) fn unsubscribe_instance(&self, topic: &str, instance: &Instance, subscription: u64) {
        let mut topics = lock(&self.topics);
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.retain(|s| match s {
                Subscriber::Module { instance: i, subscription: id } => {
                    !(*id == subscription && std::ptr::eq(i.as_ptr(), instance))
                }
                Subscriber::Base(_) => true,
            });
            if subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Each topic with its number of live subscriptions.
    pub fn topics(&self) -> Vec<(String, usize)> {
        let mut topics = lock(&self.topics);
        let mut listed: Vec<_> = topics
            .iter_mut()
            .map(|(topic, subscribers)| {
                subscribers.retain(|s| !s.is_gone());
                (topic.clone(), subscribers.len())
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        listed.sort();
        listed
    }

    /// Events published and deliveries queued since the base started.
    pub fn totals(&self) -> (u64, u64) {
        (self.published.load(Ordering::Relaxed), self.delivered.load(Ordering::Relaxed))
    }
}

/// `pedestal.events`: publish and subscribe, as the calling instance.
#[derive(Debug, Default)]
pub struct EventsService {
    events: Events,
}

impl EventsService {
    /// The topics and their subscribers, for the base's own code too.
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn answer(&self, caller: &Arc<Instance>, method: &str, payload: &[u8]) -> Result<Vec<u8>, SpiError> {
        let bad = |message: String| SpiError::new(SpiError::BAD_PAYLOAD, message);
        match method {
            "publish" => {
                let (topic, data): (String, serde_json::Value) = decode(payload)?;
                check_topic(&topic).map_err(bad)?;
                encode(&self.events.publish(&topic, &caller.id.to_string(), data))
            }
            "subscribe" => {
                let (topic, subscription): (String, u64) = decode(payload)?;
                check_topic(&topic).map_err(bad)?;
                self.events.subscribe_instance(&topic, caller, subscription);
                encode(&())
            }
            "unsubscribe" => {
                let (topic, subscription): (String, u64) = decode(payload)?;
                self.events.unsubscribe_instance(&topic, caller, subscription);
                encode(&())
            }
            other => {
                Err(SpiError::new(SpiError::UNKNOWN_METHOD, format!("pedestal.events has no method {other}")))
            }
        }
    }
}

impl Service for EventsService {
    fn name(&self) -> &'static str {
        "pedestal.events"
    }

    /// `publish [topic, data]`, `subscribe [topic, id]`, `unsubscribe [topic, id]`: answered at
    /// once (publishing queues deliveries without waiting for them). A stopped instance's
    /// subscriptions go at the next publish or listing, when it no longer accepts
    /// notifications.
    fn call(self: Arc<Self>, call: Call) {
        let result = self.answer(call.caller(), call.method(), call.payload());
        call.answer(result);
    }
}

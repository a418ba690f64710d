//! [`Filter`]: which events a subscription or projection wants, by stream
//! name, event type and correlation id.

use std::collections::HashMap;

use crate::event::{layout_fingerprint, Archivable, Event, Schema};
use crate::global::GlobalEvent;
use crate::id::CorrelationId;
use crate::storage::StreamInfo;

/// Selects events of the global log by stream name, event type and
/// correlation id.
///
/// An event passes if its stream is one of the named streams (or no stream
/// is named) **and** its stream holds one of the named types (or no type is
/// named) **and** it carries one of the named correlation ids (or none is
/// named; see [`Filter::correlation`]). [`Filter::all`] passes everything. Filtered-out events still move
/// a subscription's position (and a projection's checkpoint) forward.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize, varvedb::Event)] struct Placed { n: u32 }
/// # #[derive(Archive, Serialize, varvedb::Event)] struct Joined { n: u32 }
/// use varvedb::{Filter, GlobalSequence, StreamId};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// varve.events_in::<Placed>("orders")?.append(StreamId(1), &Placed { n: 1 })?;
/// varve.events_in::<Joined>("users")?.append(StreamId(1), &Joined { n: 2 })?;
/// varve.events_in::<Placed>("returns")?.append(StreamId(1), &Placed { n: 3 })?;
///
/// let placed = Filter::all().event_type::<Placed>();
/// let mut subscription = varve.subscribe(GlobalSequence(0)).with_filter(placed);
/// let first = subscription.try_next()?.expect("an order");
/// let second = subscription.try_next()?.expect("a return");
/// assert_eq!((first.stream_name(), second.stream_name()), ("orders", "returns"));
/// assert!(subscription.try_next()?.is_none());
///
/// let users = Filter::all().stream("users");
/// let mut subscription = varve.subscribe(GlobalSequence(0)).with_filter(users);
/// assert_eq!(subscription.try_next()?.expect("a user").global_sequence(), GlobalSequence(1));
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    streams: Vec<Box<str>>,
    types: Vec<TypeKey>,
    correlations: Vec<CorrelationId>,
}

#[derive(Debug, Clone, Copy)]
enum TypeKey {
    /// A plain rkyv type: by type name and layout.
    Plain {
        name: &'static str,
        fingerprint: u64,
    },
    /// A `#[derive(Event)]` type: by its event family.
    Event(Schema),
}

impl PartialEq for TypeKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                TypeKey::Plain { name, fingerprint },
                TypeKey::Plain {
                    name: n,
                    fingerprint: f,
                },
            ) => name == n && fingerprint == f,
            (TypeKey::Event(a), TypeKey::Event(b)) => {
                (a.name, a.fingerprint, a.type_name) == (b.name, b.fingerprint, b.type_name)
            }
            _ => false,
        }
    }
}

impl Eq for TypeKey {}

impl Filter {
    /// A filter that passes every event.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Also passes events of the stream `name` (the first call restricts the
    /// filter to the named streams).
    pub fn stream(mut self, name: impl Into<String>) -> Filter {
        let name: Box<str> = name.into().into_boxed_str();
        if !self.streams.contains(&name) {
            self.streams.push(name);
        }
        self
    }

    /// Also passes events of streams holding `E`'s event family (the first
    /// call restricts the filter to the named types): the streams
    /// [`GlobalEvent::archived::<E>`](GlobalEvent::archived) reads.
    pub fn event_type<E: Event>(self) -> Filter {
        self.with_type(TypeKey::Event(Schema::of::<E>()))
    }

    /// Also passes events of streams holding the plain rkyv type `T` (see
    /// [`GlobalEvent::is_plain`]): by type name and layout.
    pub fn plain_type<T: Archivable>(self) -> Filter {
        self.with_type(TypeKey::Plain {
            name: std::any::type_name::<T>(),
            fingerprint: layout_fingerprint::<T>(),
        })
    }

    fn with_type(mut self, key: TypeKey) -> Filter {
        if !self.types.contains(&key) {
            self.types.push(key);
        }
        self
    }

    /// Also passes events whose correlation id is `id` (the first call
    /// restricts the filter to events carrying one of the named correlation
    /// ids; an event without one never passes it). Combined with streams
    /// and types by "and".
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Step(u32);
    /// use varvedb::{Context, CorrelationId, Filter, GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut steps = varve.stream::<Step, 16>("steps")?;
    /// let saga = CorrelationId::from_u128(9);
    /// steps.with_context(Context::new().correlation(saga)).append(StreamId(1), &Step(1))?;
    /// steps.append(StreamId(1), &Step(2))?;
    /// steps.with_context(Context::new().correlation(saga)).append(StreamId(2), &Step(3))?;
    ///
    /// let mut flow = varve.subscribe(GlobalSequence(0)).with_filter(Filter::all().correlation(saga));
    /// assert_eq!(flow.try_next()?.expect("first").global_sequence(), GlobalSequence(0));
    /// assert_eq!(flow.try_next()?.expect("second").global_sequence(), GlobalSequence(2));
    /// assert!(flow.try_next()?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn correlation(mut self, id: CorrelationId) -> Filter {
        if !self.correlations.contains(&id) {
            self.correlations.push(id);
        }
        self
    }

    /// Whether the filter passes every event.
    pub fn is_all(&self) -> bool {
        self.streams.is_empty() && self.types.is_empty() && self.correlations.is_empty()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &GlobalEvent) -> bool {
        self.matches_stream(event.stream_info()) && self.matches_correlation(event)
    }

    fn matches_correlation(&self, event: &GlobalEvent) -> bool {
        self.correlations.is_empty()
            || event
                .metadata()
                .correlation_id()
                .is_some_and(|id| self.correlations.contains(&id))
    }

    fn matches_stream(&self, info: &StreamInfo) -> bool {
        let stream_ok = self.streams.is_empty() || self.streams.iter().any(|s| **s == *info.name);
        let type_ok = self.types.is_empty()
            || self.types.iter().any(|t| match t {
                TypeKey::Plain { name, fingerprint } => {
                    info.family.is_none()
                        && **name == *info.type_name
                        && *fingerprint == info.layout_fingerprint
                }
                TypeKey::Event(schema) => info.accepts(schema).is_ok(),
            });
        stream_ok && type_ok
    }
}

/// A [`Filter`] with its decision remembered per stream tag (a stream's name
/// and type never change), so matching costs one map lookup.
#[derive(Debug, Default)]
pub(crate) struct FilterCache {
    filter: Filter,
    by_tag: HashMap<u32, bool>,
}

impl FilterCache {
    pub(crate) fn new(filter: Filter) -> Self {
        FilterCache {
            filter,
            by_tag: HashMap::new(),
        }
    }

    pub(crate) fn matches(&mut self, event: &GlobalEvent) -> bool {
        if self.filter.is_all() {
            return true;
        }
        let info = event.stream_info();
        let tag = event.stream_tag();
        let stream_ok = match self.by_tag.get(&tag) {
            Some(&pass) => pass,
            None => {
                let pass = self.filter.matches_stream(info);
                self.by_tag.insert(tag, pass);
                pass
            }
        };
        stream_ok && self.filter.matches_correlation(event)
    }
}

//! Observability (feature `tracing`): the spans and events VarveDB reports
//! to the application's [`tracing`](https://docs.rs/tracing) subscriber.
//!
//! Call sites use the macros of this module, never `tracing` directly, and
//! carry no `#[cfg]`: without the feature an [`event!`] or [`span!`] expands
//! to a block that is never run (its field expressions are only
//! type-checked, so a value computed for tracing alone costs nothing), and
//! [`Timer`] is an empty type. With the feature, they are `tracing`'s own
//! macros: a callsite that no subscriber enables costs a load of the global
//! maximum level and, past it, a cached interest check; field values are
//! evaluated only for an enabled callsite, and none is formatted or
//! allocated by VarveDB (fields are numbers, `&str` or `Display` wrappers).
//!
//! Every event has a static name (`varvedb.<what>`) and the target of its
//! module (`varvedb::storage::group`, …), so `RUST_LOG=varvedb=debug` (with
//! `tracing_subscriber::EnvFilter`) shows them all; the fields are listed in
//! `docs/operations.md`.

/// An event at `tracing::Level::$level`, named `$name`, with a message and
/// fields `field = value` (numbers, `bool`, `&str`, or [`display`]).
#[cfg(feature = "tracing")]
macro_rules! event {
    ($level:ident, $name:literal, $message:literal $(, $field:ident = $value:expr)* $(,)?) => {
        ::tracing::event!(name: $name, ::tracing::Level::$level, $($field = $value,)* $message)
    };
}

/// Without the feature: the field expressions are type-checked, never run.
#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($level:ident, $name:literal, $message:literal $(, $field:ident = $value:expr)* $(,)?) => {
        if false {
            $(let _ = &$value;)*
        }
    };
}

/// A span at `tracing::Level::$level`, named `$name`, entered: the guard
/// returned exits it when dropped (bind it: `let _span = span!(...)`).
#[cfg(feature = "tracing")]
macro_rules! span {
    ($level:ident, $name:literal $(, $field:ident = $value:expr)* $(,)?) => {
        ::tracing::span!(::tracing::Level::$level, $name $(, $field = $value)*).entered()
    };
}

/// Without the feature: an empty guard; the fields are type-checked only.
#[cfg(not(feature = "tracing"))]
macro_rules! span {
    ($level:ident, $name:literal $(, $field:ident = $value:expr)* $(,)?) => {{
        if false {
            $(let _ = &$value;)*
        }
        $crate::trace::NoSpan
    }};
}

/// A [`Timer`] that runs only if events at `tracing::Level::$level` can be
/// enabled at all (some subscriber asks for that level): otherwise, and
/// without the feature, it never reads the clock.
#[cfg(feature = "tracing")]
macro_rules! timer {
    ($level:ident) => {
        $crate::trace::Timer::start_if(
            ::tracing::Level::$level <= ::tracing::level_filters::STATIC_MAX_LEVEL
                && ::tracing::Level::$level <= ::tracing::level_filters::LevelFilter::current(),
        )
    };
}

/// Without the feature: a timer that never reads the clock.
#[cfg(not(feature = "tracing"))]
macro_rules! timer {
    ($level:ident) => {
        $crate::trace::Timer::start_if(false)
    };
}

pub(crate) use {event, span, timer};

/// The guard [`span!`] returns without the feature.
#[cfg(not(feature = "tracing"))]
pub(crate) struct NoSpan;

/// Measures a duration for an event's field, only when tracing is on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "tracing")]
    started: Option<std::time::Instant>,
}

impl Timer {
    /// Reads the clock if `on`.
    #[inline]
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn start_if(on: bool) -> Timer {
        Timer {
            #[cfg(feature = "tracing")]
            started: on.then(std::time::Instant::now),
        }
    }

    /// Microseconds since the start (0 for a timer that never started).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn micros(&self) -> u64 {
        #[cfg(feature = "tracing")]
        if let Some(started) = self.started {
            return started.elapsed().as_micros() as u64;
        }
        0
    }
}

/// A field recorded with its `Display` form (a path, an id), formatted by
/// the subscriber only if it records the event.
#[cfg(feature = "tracing")]
pub(crate) fn display<T: std::fmt::Display>(value: T) -> tracing::field::DisplayValue<T> {
    tracing::field::display(value)
}

/// Without the feature: only type-checked, never called.
#[cfg(not(feature = "tracing"))]
#[allow(dead_code)]
pub(crate) fn display<T: std::fmt::Display>(value: T) -> T {
    value
}

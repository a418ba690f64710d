//! Given / when / then tests of an aggregate's logic, without a store.

use std::fmt;

use rkyv::rancor;
use rkyv::Archive;

use super::Aggregate;

/// A given / when / then test of an [`Aggregate`]: *given* these past events,
/// *when* this command is handled, *then* these events (or this rejection).
///
/// Every event, given or produced, goes through its archived form as in
/// production: serialized with rkyv, validated, then folded with
/// [`apply`](Aggregate::apply). So a test also catches an event that does not
/// serialize, and `apply` sees exactly what it sees on a real load.
///
/// These are test helpers: they panic, with a message, when an expectation
/// fails or an event cannot be serialized or validated.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{Aggregate, AggregateTest};
///
/// #[derive(Archive, Serialize, Debug, PartialEq, varvedb::Event)]
/// enum DoorEvent {
///     Opened,
///     Closed,
/// }
///
/// #[derive(Default)]
/// struct Door {
///     open: bool,
/// }
///
/// #[derive(Debug, PartialEq)]
/// enum DoorError {
///     AlreadyOpen,
/// }
///
/// impl Aggregate for Door {
///     type Event = DoorEvent;
///     type Command = &'static str;
///     type Error = DoorError;
///     const STREAM: &'static str = "doors";
///
///     fn apply(&mut self, event: &ArchivedDoorEvent) {
///         self.open = matches!(event, ArchivedDoorEvent::Opened);
///     }
///
///     fn handle(&self, command: &&'static str) -> Result<Vec<DoorEvent>, DoorError> {
///         match *command {
///             "open" if self.open => Err(DoorError::AlreadyOpen),
///             "open" => Ok(vec![DoorEvent::Opened]),
///             _ => Ok(vec![DoorEvent::Closed]),
///         }
///     }
/// }
///
/// AggregateTest::<Door>::given_no_events()
///     .when(&"open")
///     .then_expect_events(&[DoorEvent::Opened]);
///
/// AggregateTest::<Door>::given([DoorEvent::Opened])
///     .when(&"open")
///     .then_expect_error(&DoorError::AlreadyOpen);
///
/// AggregateTest::<Door>::given([DoorEvent::Opened, DoorEvent::Closed])
///     .when(&"open")
///     .then_expect_state(|door| assert!(door.open));
/// ```
pub struct AggregateTest<A> {
    state: A,
}

impl<A> fmt::Debug for AggregateTest<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateTest").finish_non_exhaustive()
    }
}

/// Round-trips `event` through its archived form and folds it into `state`
/// (through [`Aggregate::apply_with_meta`], with no metadata, as a load
/// folds an event appended without any).
fn apply_archived<A: Aggregate>(state: &mut A, event: &A::Event, what: &str) {
    let bytes = rkyv::to_bytes::<rancor::Error>(event)
        .unwrap_or_else(|e| panic!("{what} event cannot be serialized with rkyv: {e}"));
    let archived = rkyv::access::<<A::Event as Archive>::Archived, rancor::Error>(&bytes)
        .unwrap_or_else(|e| panic!("{what} event does not validate once archived: {e}"));
    state.apply_with_meta(archived, &crate::metadata::Metadata::default());
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the default state, as for a new stream id.
    pub fn given_no_events() -> Self {
        AggregateTest {
            state: A::default(),
        }
    }

    /// Starts from the state these events fold into.
    ///
    /// # Panics
    /// If an event cannot be serialized or does not validate.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            apply_archived(&mut state, &event, "a given");
        }
        AggregateTest { state }
    }

    /// Handles `command` against the given state.
    pub fn when(self, command: &A::Command) -> TestOutcome<A> {
        let result = self.state.handle(command);
        TestOutcome {
            state: self.state,
            result,
        }
    }
}

/// What [`AggregateTest::when`] produced: events or a rejection, and the
/// state they were decided against.
pub struct TestOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> fmt::Debug for TestOutcome<A>
where
    A::Event: fmt::Debug,
    A::Error: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestOutcome")
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> TestOutcome<A> {
    /// Asserts the command was accepted with exactly `expected`, and that each
    /// of them round-trips through its archived form into the state.
    ///
    /// # Panics
    /// If the command was rejected or produced other events.
    pub fn then_expect_events(self, expected: &[A::Event])
    where
        A::Event: PartialEq + fmt::Debug,
        A::Error: fmt::Debug,
    {
        match &self.result {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e:?}"),
        }
        self.into_state();
    }

    /// Asserts the command was rejected with `expected`.
    ///
    /// # Panics
    /// If the command was accepted or rejected with another error.
    pub fn then_expect_error(self, expected: &A::Error)
    where
        A::Event: fmt::Debug,
        A::Error: PartialEq + fmt::Debug,
    {
        match &self.result {
            Ok(events) => {
                panic!("expected rejection {expected:?}, but the command produced {events:?}")
            }
            Err(e) => assert_eq!(e, expected, "the command was rejected with another error"),
        }
    }

    /// Asserts the command was accepted, folds its events (through their
    /// archived form) into the state, and hands the new state to `check`.
    ///
    /// # Panics
    /// If the command was rejected, or as `check` does.
    pub fn then_expect_state(self, check: impl FnOnce(&A))
    where
        A::Error: fmt::Debug,
    {
        check(&self.into_state());
    }

    /// The events or the rejection, for checks of your own.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }

    /// The state after the produced events, folded through their archived
    /// form.
    ///
    /// # Panics
    /// If the command was rejected.
    fn into_state(self) -> A
    where
        A::Error: fmt::Debug,
    {
        let mut state = self.state;
        match self.result {
            Ok(events) => {
                for event in &events {
                    apply_archived(&mut state, event, "a produced");
                }
                state
            }
            Err(e) => panic!("expected the command to be accepted, but it was rejected: {e:?}"),
        }
    }
}

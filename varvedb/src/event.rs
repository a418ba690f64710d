//! What an event type must provide: rkyv serialization and validation
//! ([`Archivable`]), and, with `#[derive(Event)]`, its stream name, buffer size and
//! schema identity ([`Event`]).

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Serialize};

/// A type VarveDB can store: serializable with rkyv, and whose archived form can
/// be validated with bytecheck before it is read.
///
/// It is implemented for every type that derives rkyv's `Archive` and
/// `Serialize` (with rkyv's default `bytecheck` feature); there is nothing to
/// implement by hand.
///
/// ```
/// use rkyv::{Archive, Serialize};
///
/// #[derive(Archive, Serialize)]
/// struct Deposited {
///     cents: u64,
/// }
///
/// fn assert_storable<T: varvedb::Archivable>() {}
/// assert_storable::<Deposited>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored by VarveDB: derive rkyv's `Archive` and `Serialize`",
    label = "not storable: add `#[derive(rkyv::Archive, rkyv::Serialize)]`",
    note = "VarveDB stores events with rkyv, so every event type (and every type in its fields) \
            must implement rkyv's `Archive` and `Serialize`"
)]
pub trait Archivable:
    Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
    + for<'a> Serialize<HighSerializer<AlignedVec<16>, ArenaHandle<'a>, rancor::Error>>
{
}

// Written with `Serialize` (which implies `Archive`) first and the archived
// type's bound apart, so a type lacking both traits gets one error, not two.
impl<T> Archivable for T
where
    T: for<'a> Serialize<HighSerializer<AlignedVec<16>, ArenaHandle<'a>, rancor::Error>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
}

/// Fails to compile, with [`Archivable`]'s message, unless `T` is storable.
/// `#[derive(Event)]` calls it so that a type missing rkyv's derives gets one
/// short error at its name.
#[doc(hidden)]
pub const fn assert_archivable<T: ?Sized + Archivable>() {}

/// An event type that knows its own stream name, buffer size and schema identity,
/// usually through `#[derive(Event)]`.
///
/// [`Varve::events`](crate::Varve::events) opens the stream from these constants, so
/// no name or number is repeated at a call site.
///
/// # Deriving
///
/// `#[derive(Event)]` (re-exported beside this trait, so `use varvedb::Event`
/// brings both) goes on a struct (named, tuple or unit) or an enum that also
/// derives rkyv's `Archive` and `Serialize`:
///
/// ```
/// use rkyv::{Archive, Deserialize, Serialize};
/// use varvedb::{Event, StreamId, Varve};
///
/// #[derive(Archive, Serialize, Deserialize, Event)]
/// #[event(stream = "orders", buffer = 4096, version = 2)]
/// struct OrderPlaced {
///     order: u64,
///     cents: u64,
/// }
///
/// assert_eq!(OrderPlaced::STREAM, "orders");
/// assert_eq!(OrderPlaced::BUFFER_SIZE, 4096);
/// assert_eq!(OrderPlaced::VERSION, 2);
///
/// let dir = tempfile::tempdir()?;
/// let varve = Varve::new(dir.path())?;
/// let mut orders = varve.events::<OrderPlaced>()?;
/// orders.append(StreamId(1), &OrderPlaced { order: 1, cents: 500 })?;
/// let placed = orders.reader().get_archived(StreamId(1), varvedb::StreamSequence(0))?;
/// assert_eq!(placed.expect("just written").cents, 500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// ## Attributes
///
/// Keys go in `#[event(...)]` on the type. Several keys may share one attribute
/// or be spread over several; each key may be given once. Values are literals.
///
/// | key | value | default |
/// |---|---|---|
/// | `stream = "orders"` | 1 to 255 bytes of ASCII letters, digits, `_`, `-`, `.` and `/` | the type's name in snake_case |
/// | `buffer = 4096` | the initial serialization buffer in bytes, 1 to 67108864 (64 MiB) | 1024 |
/// | `version = 2` | the schema version, 1 to 4294967295 | 1 |
/// | `name = "OrderPlaced"` | the event's stable name: ASCII letters, digits, `_`, `-`, `.`, `/`; 1 to 255 bytes | the type's name |
/// | `upcast_from = OrderPlacedV1` | the previous version's type (needs `version` and an [`Upcast`] impl) | none: a first version |
///
/// - **`stream`**: the default is the event's name (see `name`) in snake_case:
///   `OrderPlaced` becomes `order_placed`, `HTTPRequest` becomes `http_request`. (At run time
///   [`Varve::stream`](crate::Varve::stream) accepts any UTF-8 name; the derive
///   asks for the portable subset above.)
/// - **`buffer`**: only a starting size: a larger event is still stored whole,
///   the buffer grows on the heap.
/// - **`version`**: bump it when the layout changes on purpose; it is part of
///   the fingerprint.
/// - **`name`**: what identifies the event in the store, instead of the type's
///   path: keep it when you rename the type, and give every version of one
///   event the same name.
/// - **`upcast_from`**: the type of the previous version of this event. The
///   derive checks at compile time that it has the same `name` and `stream`
///   and a lower `version`, and that `Self: Upcast<Previous>`; chains may be of
///   any length ([`lineage`] lists them).
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::Event;
///
/// // All defaults.
/// #[derive(Archive, Serialize, Event)]
/// struct HTTPRequestLogged(u64);
///
/// // Keys spread over two attributes.
/// #[derive(Archive, Serialize, Event)]
/// #[event(stream = "payments/eu-west.v2")]
/// #[event(version = 3)]
/// enum Payment {
///     Authorized { cents: u64 },
///     Captured,
///     Refunded(u64),
/// }
///
/// assert_eq!(HTTPRequestLogged::STREAM, "http_request_logged");
/// assert_eq!(HTTPRequestLogged::BUFFER_SIZE, 1024);
/// assert_eq!(HTTPRequestLogged::VERSION, 1);
/// assert_eq!(Payment::STREAM, "payments/eu-west.v2");
/// assert_eq!((Payment::BUFFER_SIZE, Payment::VERSION), (1024, 3));
/// ```
///
/// Mistakes are compile errors at the offending token, all reported at once: an
/// empty or invalid stream name, `buffer = 0` or above 64 MiB, `version = 0`,
/// an unknown or repeated key, a string where a number is expected (or the
/// reverse), `#[event]` on a field or variant, the derive on a union, a type
/// without rkyv's `Archive` and `Serialize`, and an `upcast_from` without a
/// `version`, to an event of another name or stream, to a version that is not
/// lower, or without its [`Upcast`] impl:
///
/// ```compile_fail,E0277
/// use varvedb::Event;
///
/// #[derive(Event)] // `Plain` cannot be stored by VarveDB: derive rkyv's `Archive` and `Serialize`
/// struct Plain {
///     id: u64,
/// }
/// ```
///
/// ## Generic types
///
/// The impl carries the type's generics and where-clause, and holds for the
/// instances that rkyv can store (`Self: Archivable`):
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::Event;
///
/// #[derive(Archive, Serialize, Event)]
/// #[event(stream = "measurements")]
/// struct Measured<T> {
///     value: T,
/// }
///
/// fn stream_of<E: Event>() -> &'static str {
///     E::STREAM
/// }
/// assert_eq!(stream_of::<Measured<f64>>(), "measurements");
/// ```
///
/// # Identity in the store
///
/// A stream opened through [`Varve::events`](crate::Varve::events),
/// [`Varve::events_in`](crate::Varve::events_in) or an aggregate is bound to
/// the event's *family*: its [`NAME`](Event::NAME) and every version appended
/// to it, each with its [`FINGERPRINT`](Event::FINGERPRINT). Neither depends
/// on the module path or the crate name, so moving the type or renaming the
/// crate changes nothing, and `#[event(name = "...")]` keeps the identity
/// across a rename of the type. Every block records the fingerprint of the
/// version it was written with, and every typed read compares it: the
/// current version is read in place, an older version of the chain is
/// upcast, anything else is an error
/// ([`Error::SchemaMismatch`](crate::Error::SchemaMismatch) at open,
/// [`Error::UnknownEventVersion`](crate::Error::UnknownEventVersion) for an
/// event a newer build wrote). Only the newest version can be appended.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a VarveDB event",
    label = "not an event",
    note = "derive it: `#[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]`"
)]
pub trait Event: Archivable {
    /// The stream this type's events are stored in.
    const STREAM: &'static str;
    /// Initial capacity, in bytes, of a handle's serialization buffer. Larger
    /// events still succeed: the buffer grows on the heap.
    const BUFFER_SIZE: usize;
    /// The type's path as written, `module_path!()` then the name (for example
    /// `my_app::orders::OrderPlaced`), without generic arguments: for messages
    /// and logs. The store binds streams by [`NAME`](Event::NAME) and
    /// fingerprints, not by path.
    const TYPE_NAME: &'static str;
    /// The schema version declared with `#[event(version = N)]` (default 1).
    const VERSION: u32;
    /// A fingerprint of the type's declared layout, never 0: a 64-bit FNV-1a
    /// hash, computed at compile time, of the event's [`NAME`](Event::NAME),
    /// its version, each field's name (or index), position, type as written and
    /// `#[rkyv(...)]` attributes, and each variant's name and fields.
    ///
    /// Adding, removing, reordering, renaming or retyping a field (or a variant)
    /// or changing the version changes it; doc comments, formatting, the module
    /// the type lives in and the crate's name do not, and neither does renaming
    /// the type when `#[event(name = "...")]` keeps the old name. Field types
    /// are hashed as written (whatever the spacing): `u64` and
    /// `core::primitive::u64`, or a type and its alias, count as different; and
    /// a generic type has one fingerprint for all its instances.
    const FINGERPRINT: u64;
    /// The event's stable name: the type's name unless `#[event(name = "...")]`
    /// says otherwise. Every version of an event shares it, and it survives
    /// renaming the type, moving it to another module or renaming the crate.
    const NAME: &'static str;
    /// The version this one is upcast from (`#[event(upcast_from = OldType)]`),
    /// or [`NoPrevious`] for an event's first version.
    type Previous: Lineage;
    /// Builds this version from the archived form of the previous one. The
    /// derive implements it through [`Upcast`]; for a first version it cannot
    /// be called ([`NoPrevious`] has no values).
    fn upcast(previous: &<Self::Previous as Lineage>::Archived) -> Self
    where
        Self: Sized;
}

/// The conversion from the previous version of an event, which
/// `#[event(upcast_from = Previous)]` requires.
///
/// It reads the previous version's archived form (zero-copy, already
/// validated) and returns the new version. It cannot fail: a change that can
/// fail to convert is a new event, not a new version of an old one.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{Event, Upcast};
///
/// #[derive(Archive, Serialize, Event)]
/// #[event(name = "OrderPlaced", stream = "orders")]
/// struct OrderPlacedV1 {
///     cents: u64,
/// }
///
/// #[derive(Archive, Serialize, Event)]
/// #[event(name = "OrderPlaced", stream = "orders", version = 2, upcast_from = OrderPlacedV1)]
/// struct OrderPlaced {
///     cents: u64,
///     currency: [u8; 3],
/// }
///
/// impl Upcast<OrderPlacedV1> for OrderPlaced {
///     fn upcast(old: &ArchivedOrderPlacedV1) -> Self {
///         OrderPlaced { cents: old.cents.to_native(), currency: *b"EUR" }
///     }
/// }
///
/// assert_eq!(OrderPlaced::NAME, OrderPlacedV1::NAME);
/// assert_eq!(varvedb::lineage::<OrderPlaced>(), vec![
///     (1, OrderPlacedV1::FINGERPRINT),
///     (2, OrderPlaced::FINGERPRINT),
/// ]);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` declares `upcast_from = {Old}` but has no conversion from it",
    label = "missing `impl varvedb::Upcast<{Old}> for {Self}`",
    note = "write `impl varvedb::Upcast<{Old}> for {Self} {{ fn upcast(old: &<{Old} as rkyv::Archive>::Archived) -> Self {{ .. }} }}`"
)]
pub trait Upcast<Old: Event>: Sized {
    /// The new version built from the old one's archived form.
    fn upcast(old: &Old::Archived) -> Self;
}

/// The [`Previous`](Event::Previous) of an event's first version: there is
/// nothing to upcast from. It has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPrevious {}

/// The chain of versions an event type knows: its own and, through
/// [`Event::Previous`], every earlier one. Implemented for every [`Event`]
/// and for [`NoPrevious`]; there is nothing to implement by hand.
pub trait Lineage: sealed::Sealed {
    /// The archived form of this version (for [`NoPrevious`], itself).
    type Archived;
    /// This version's fingerprint; 0 for [`NoPrevious`].
    const FINGERPRINT: u64;
    /// Appends `(version, fingerprint)` of every version up to this one,
    /// oldest first.
    #[doc(hidden)]
    fn versions(out: &mut Vec<(u32, u64)>);
    /// Builds `Next` (the version after this one) from `bytes`, the archived
    /// form of the version of this chain with fingerprint `fingerprint`,
    /// upcasting step by step. `Ok(None)` if no version of this chain has that
    /// fingerprint.
    #[doc(hidden)]
    fn upcast_into<Next: Event<Previous = Self>>(
        fingerprint: u64,
        bytes: &[u8],
    ) -> Result<Option<Next>, UpcastError>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::NoPrevious {}
    impl<E: super::Event> Sealed for E {}
}

/// Why an older version's bytes could not be upcast: they failed validation
/// as that version, or re-archiving an intermediate version failed.
#[derive(Debug)]
pub struct UpcastError {
    /// The version whose bytes were being read.
    pub version: u32,
    /// What rkyv reported.
    pub detail: String,
}

impl std::fmt::Display for UpcastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "version {}: {}", self.version, self.detail)
    }
}

impl std::error::Error for UpcastError {}

impl Lineage for NoPrevious {
    type Archived = NoPrevious;
    const FINGERPRINT: u64 = 0;

    fn versions(_: &mut Vec<(u32, u64)>) {}

    fn upcast_into<Next: Event<Previous = Self>>(
        _: u64,
        _: &[u8],
    ) -> Result<Option<Next>, UpcastError> {
        Ok(None)
    }
}

impl<E: Event> Lineage for E {
    type Archived = E::Archived;
    const FINGERPRINT: u64 = E::FINGERPRINT;

    fn versions(out: &mut Vec<(u32, u64)>) {
        E::Previous::versions(out);
        out.push((E::VERSION, E::FINGERPRINT));
    }

    fn upcast_into<Next: Event<Previous = Self>>(
        fingerprint: u64,
        bytes: &[u8],
    ) -> Result<Option<Next>, UpcastError> {
        let invalid = |e: rancor::Error| UpcastError {
            version: E::VERSION,
            detail: e.to_string(),
        };
        if fingerprint == E::FINGERPRINT {
            let archived = access_aligned::<E, _>(bytes, |archived| Next::upcast(archived))
                .map_err(invalid)?;
            return Ok(Some(archived));
        }
        // An older version: build this one first, re-archive it, go on.
        let Some(this) = E::Previous::upcast_into::<E>(fingerprint, bytes)? else {
            return Ok(None);
        };
        let archived = rkyv::to_bytes::<rancor::Error>(&this).map_err(invalid)?;
        rkyv::access::<E::Archived, rancor::Error>(&archived)
            .map(|archived| Some(Next::upcast(archived)))
            .map_err(invalid)
    }
}

/// Validates `bytes` as `E`'s archived form and calls `f` on it, first copying
/// them to an aligned buffer if they are not aligned enough.
fn access_aligned<E: Archivable, R>(
    bytes: &[u8],
    f: impl FnOnce(&E::Archived) -> R,
) -> Result<R, rancor::Error> {
    if bytes
        .as_ptr()
        .align_offset(std::mem::align_of::<E::Archived>())
        == 0
    {
        return rkyv::access::<E::Archived, rancor::Error>(bytes).map(f);
    }
    let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    rkyv::access::<E::Archived, rancor::Error>(&copy).map(f)
}

/// Every version `E` knows, oldest first, as `(version, fingerprint)`.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::Event;
///
/// #[derive(Archive, Serialize, Event)]
/// struct Opened { at: u64 }
///
/// assert_eq!(varvedb::lineage::<Opened>(), vec![(1, Opened::FINGERPRINT)]);
/// ```
pub fn lineage<E: Event>() -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    E::versions(&mut out);
    out
}

/// `E` built from `bytes`, the archived form of the version of `E`'s chain with
/// `fingerprint` (an older one: the current version is read in place, never
/// through this). `Ok(None)` if `E` knows no version with that fingerprint.
#[doc(hidden)]
pub fn upcast<E: Event>(fingerprint: u64, bytes: &[u8]) -> Result<Option<E>, UpcastError> {
    E::Previous::upcast_into::<E>(fingerprint, bytes)
}

/// What the store needs to know of a `#[derive(Event)]` type at run time,
/// without its type: its name, its current version and fingerprint, the chain
/// of versions it knows, and how to upcast an older version's bytes into the
/// current version's archived form. `Copy` and free to build (statics and
/// function pointers), so typed reads of the global log build one per call.
#[derive(Clone, Copy)]
pub(crate) struct Schema {
    /// [`Event::NAME`].
    pub(crate) name: &'static str,
    /// [`Event::VERSION`].
    pub(crate) version: u32,
    /// [`Event::FINGERPRINT`] (at least 1: 0 means "unknown" in the catalog).
    pub(crate) fingerprint: u64,
    /// [`std::any::type_name`] of the type: for messages, and for adopting a
    /// stream bound by type name (format 1, or [`Varve::stream`](crate::Varve::stream)).
    pub(crate) type_name: &'static str,
    /// The layout fingerprint a plain binding of the type records.
    pub(crate) layout: fn() -> u64,
    /// [`lineage`] of the type, as the derive computes it.
    pub(crate) chain: fn() -> Vec<(u32, u64)>,
    /// For an instance of a generic type: a hash of its type arguments,
    /// mixed into every fingerprint (the derive hashes a generic type's
    /// fields as written, one fingerprint for all its instances, so
    /// `Measured<u32>` and `Measured<f32>` would otherwise share a stream).
    /// 0 for a type without generic arguments: fingerprints as derived.
    pub(crate) args: u64,
    /// Upcasts `bytes` of the version with (derived) fingerprint `fp` into
    /// `out` (the current version, archived): `Ok(false)` if the type knows
    /// no such version.
    pub(crate) upcast_derived: fn(u64, &[u8], &mut AlignedVec<16>) -> Result<bool, UpcastError>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("fingerprint", &format_args!("{:#018x}", self.fingerprint))
            .finish()
    }
}

/// `fp` with the type arguments' hash `args` mixed in (never 0).
fn mix(fp: u64, args: u64) -> u64 {
    if args == 0 {
        return fp;
    }
    let mut h = Fnv::new();
    h.write(&fp.to_le_bytes());
    h.write(&args.to_le_bytes());
    h.finish().max(1)
}

/// A hash of the generic arguments in `type_name` (what follows the type's
/// own path, from its first `<`), or 0 for a type without any.
fn generic_args(type_name: &str) -> u64 {
    match type_name.find('<') {
        Some(at) => {
            let mut h = Fnv::new();
            h.write(b"varvedb generic arguments\0");
            h.write(&type_name.as_bytes()[at..]);
            h.finish().max(1)
        }
        None => 0,
    }
}

impl Schema {
    /// The schema of `E`.
    pub(crate) fn of<E: Event>() -> Schema {
        let type_name = std::any::type_name::<E>();
        let args = generic_args(type_name);
        Schema {
            name: E::NAME,
            version: E::VERSION,
            // 0 means "unknown" to the catalog; the derive never produces it,
            // but a hand-written impl might.
            fingerprint: mix(E::FINGERPRINT, args).max(1),
            type_name,
            layout: layout_fingerprint::<E>,
            chain: lineage::<E>,
            args,
            upcast_derived: upcast_archived::<E>,
        }
    }

    /// `(version, fingerprint)` of every version the type knows, oldest
    /// first, as the store records them.
    pub(crate) fn lineage(&self) -> Vec<(u32, u64)> {
        let mut chain = (self.chain)();
        for (_, fp) in &mut chain {
            *fp = mix(*fp, self.args);
        }
        chain
    }

    /// The version this schema's chain gives (stored) fingerprint `fp`, if any.
    pub(crate) fn version_of(&self, fp: u64) -> Option<u32> {
        if fp == self.fingerprint {
            return Some(self.version);
        }
        self.lineage()
            .into_iter()
            .find(|&(_, f)| f == fp)
            .map(|(v, _)| v)
    }

    /// Upcasts `bytes` of the version with (stored) fingerprint `fp` into
    /// `out`, archived as the current version: `Ok(false)` if the type knows
    /// no such version.
    pub(crate) fn upcast(
        &self,
        fp: u64,
        bytes: &[u8],
        out: &mut AlignedVec<16>,
    ) -> Result<bool, UpcastError> {
        let derived = (self.chain)()
            .into_iter()
            .find(|&(_, f)| mix(f, self.args) == fp)
            .map(|(_, f)| f);
        match derived {
            Some(derived) => (self.upcast_derived)(derived, bytes, out),
            None => Ok(false),
        }
    }
}

/// Upcasts the bytes of `E`'s version with fingerprint `fp` and archives the
/// result into `out` (reused: cleared, its capacity kept).
fn upcast_archived<E: Event>(
    fp: u64,
    bytes: &[u8],
    out: &mut AlignedVec<16>,
) -> Result<bool, UpcastError> {
    let Some(value) = upcast::<E>(fp, bytes)? else {
        return Ok(false);
    };
    let mut buf = std::mem::take(out);
    buf.clear();
    *out =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(&value, buf).map_err(|e| UpcastError {
            version: E::VERSION,
            detail: e.to_string(),
        })?;
    Ok(true)
}

/// Whether two strings are equal, in `const` contexts (the derive's
/// compile-time checks of `upcast_from`).
#[doc(hidden)]
pub const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The layout fingerprint VarveDB records for a plain rkyv type: a hash of its
/// type name and of its archived size and alignment.
pub(crate) fn layout_fingerprint<T: Archive>() -> u64 {
    let mut h = Fnv::new();
    h.write(std::any::type_name::<T>().as_bytes());
    h.write(&(std::mem::size_of::<T::Archived>() as u64).to_le_bytes());
    h.write(&(std::mem::align_of::<T::Archived>() as u64).to_le_bytes());
    h.finish()
}

/// 64-bit FNV-1a, usable in `const` contexts (the derive computes
/// [`Event::FINGERPRINT`] with the same hash, in the macro).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) const fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) const fn write_const(mut self, bytes: &[u8]) -> Self {
        let mut i = 0;
        while i < bytes.len() {
            self.0 ^= bytes[i] as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        self
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        *self = self.write_const(bytes);
    }

    pub(crate) const fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Archive, Serialize)]
    struct A {
        _x: u64,
    }

    #[derive(Archive, Serialize)]
    struct B {
        _x: u64,
        _y: u32,
    }

    #[test]
    fn different_layouts_have_different_fingerprints() {
        assert_ne!(layout_fingerprint::<A>(), layout_fingerprint::<B>());
        assert_eq!(layout_fingerprint::<A>(), layout_fingerprint::<A>());
    }
}

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
pub trait Archivable:
    Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
    + for<'a> Serialize<HighSerializer<AlignedVec<16>, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Archivable for T where
    T: Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
        + for<'a> Serialize<HighSerializer<AlignedVec<16>, ArenaHandle<'a>, rancor::Error>>
{
}

/// An event type that knows its own stream name, buffer size and schema identity,
/// usually through `#[derive(Event)]`.
///
/// [`Varve::events`](crate::Varve::events) opens the stream from these constants, so
/// no name or number is repeated at a call site.
pub trait Event: Archivable {
    /// The stream this type's events are stored in.
    const STREAM: &'static str;
    /// Initial capacity, in bytes, of a handle's serialization buffer. Larger
    /// events still succeed: the buffer grows on the heap.
    const BUFFER_SIZE: usize;
    /// The type's name, as recorded in the store when the stream is created.
    const TYPE_NAME: &'static str;
    /// The schema version declared with `#[event(version = N)]` (default 1).
    const VERSION: u32;
    /// A fingerprint of the type's archived layout (field names, order and types,
    /// variant names, version). Any change to the layout changes it.
    const FINGERPRINT: u64;
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

/// 64-bit FNV-1a, usable in `const` contexts (the derive computes fingerprints at
/// compile time with it).
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

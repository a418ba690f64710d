//! Where a projection keeps its checkpoint, read model and skip records in
//! the store's `state` database.
//!
//! ```text
//! proj/<name>/c                  checkpoint: u64 LE, the next global sequence to apply
//! proj/<name>/k                  kind: `in-store` or `external`, written with the checkpoint
//! proj/<name>/g                  generation: u64 LE, raised by every checkpoint write and reset
//! proj/<name>/m/<key>            read model entries (in-store projections)
//! proj/<name>/s/<global, BE u64> an event skipped under `OnError::Skip`: the error, UTF-8
//! ```
//! Names cannot contain `/`, so one projection's prefix never covers another's.
//! In-store and external projections share the name space; the kind recorded
//! beside the checkpoint keeps one of each kind from sharing a checkpoint
//! (`Error::ProjectionKindMismatch`). A checkpoint written before kinds were
//! recorded belongs to the first kind that uses it.

use std::ops::ControlFlow;
use std::sync::Arc;

use crate::error::{Error, Location, Result};
use crate::position::GlobalSequence;
use crate::storage::{Store, View, WriteTxn};

/// The longest projection name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// An event a projection skipped under [`OnError::Skip`](crate::OnError::Skip),
/// with the error its handler returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The event's position in the global log.
    pub at: GlobalSequence,
    /// The handler's error, as text.
    pub error: String,
}

/// Which projector owns a projection's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A [`Projector`](crate::Projector) (also what a `ModelReader` reads).
    InStore,
    /// An [`ExternalProjector`](crate::ExternalProjector).
    External,
}

impl Kind {
    pub(super) fn tag(self) -> &'static str {
        match self {
            Kind::InStore => "in-store",
            Kind::External => "external",
        }
    }
}

/// The keys of one projection.
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    name: Arc<str>,
    kind: Kind,
    pub(super) checkpoint: Vec<u8>,
    /// Raised by every checkpoint write and every reset, so a compare-and-set
    /// of the checkpoint also sees a reset that brought it back to the value
    /// a projector read (ABA).
    pub(super) generation: Vec<u8>,
    pub(super) kind_key: Vec<u8>,
    root: Vec<u8>,
    model: Vec<u8>,
    pub(super) skipped: Vec<u8>,
}

/// Checks a projection name: 1 to 64 bytes of ASCII letters, digits, `_`, `-`, `.`.
fn validate(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a projection name must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "a projection name must be at most 64 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        "a projection name may only use ASCII letters, digits, `_`, `-` and `.`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidProjectionName {
        name: name.chars().take(80).collect(),
        reason,
    })
}

impl Namespace {
    pub(crate) fn new(name: &str, kind: Kind) -> Result<Namespace> {
        validate(name)?;
        let root = format!("proj/{name}/").into_bytes();
        let with = |suffix: &[u8]| [root.as_slice(), suffix].concat();
        Ok(Namespace {
            name: name.into(),
            kind,
            checkpoint: with(b"c"),
            kind_key: with(b"k"),
            generation: with(b"g"),
            model: with(b"m/"),
            skipped: with(b"s/"),
            root,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The prefix of the read model's keys.
    pub(crate) fn model(&self) -> &[u8] {
        &self.model
    }

    /// The full key of read-model entry `key`, built in `buf`.
    pub(crate) fn model_key<'b>(&self, buf: &'b mut Vec<u8>, key: &[u8]) -> &'b [u8] {
        buf.clear();
        buf.extend_from_slice(&self.model);
        buf.extend_from_slice(key);
        buf
    }

    /// The kind recorded as `recorded` (the value of `proj/<name>/k`).
    pub(super) fn decode_kind(&self, recorded: &[u8]) -> Result<Kind> {
        [Kind::InStore, Kind::External]
            .into_iter()
            .find(|k| k.tag().as_bytes() == recorded)
            .ok_or_else(|| Error::Corruption {
                location: Location::Record(format!("the kind of projection {:?}", self.name)),
                detail: format!("unknown kind {:?}", String::from_utf8_lossy(recorded)),
            })
    }

    /// This namespace's name with another kind (what a reset of a name of
    /// that kind clears).
    pub(super) fn with_kind(&self, kind: Kind) -> Namespace {
        Namespace {
            kind,
            ..self.clone()
        }
    }

    /// The skip record key's global sequence (`key` starts with the prefix).
    pub(super) fn skip_position(&self, key: &[u8]) -> Result<u64> {
        key[self.skipped.len().min(key.len())..]
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Corruption {
                location: Location::Record(format!(
                    "the skip records of projection {:?}",
                    self.name
                )),
                detail: format!("a key of {} bytes", key.len()),
            })
    }

    pub(super) fn decode_checkpoint(&self, raw: Option<&[u8]>) -> Result<u64> {
        match raw {
            None => Ok(0),
            Some(bytes) => {
                bytes
                    .try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| Error::Corruption {
                        location: Location::Record(format!(
                            "the checkpoint of projection {:?}",
                            self.name
                        )),
                        detail: format!("{} bytes instead of 8", bytes.len()),
                    })
            }
        }
    }

    /// `Ok(true)` if the kind recorded for the name is this namespace's,
    /// `Ok(false)` if none is recorded, `ProjectionKindMismatch` otherwise.
    fn check_kind(&self, recorded: Option<&[u8]>) -> Result<bool> {
        let Some(recorded) = recorded else {
            return Ok(false);
        };
        if recorded == self.kind.tag().as_bytes() {
            return Ok(true);
        }
        let stored = self.decode_kind(recorded)?;
        Err(Error::ProjectionKindMismatch {
            projection: self.name.to_string(),
            stored: stored.tag(),
            requested: self.kind.tag(),
        })
    }

    /// The checkpoint as `txn` sees it: the next global sequence to apply.
    pub(crate) fn checkpoint_in(&self, txn: &WriteTxn<'_>) -> Result<u64> {
        self.check_kind(txn.state_get(&self.kind_key)?)?;
        self.decode_checkpoint(txn.state_get(&self.checkpoint)?)
    }

    /// The checkpoint and its generation as `txn` sees them.
    pub(crate) fn position_in(&self, txn: &WriteTxn<'_>) -> Result<(u64, u64)> {
        let checkpoint = self.checkpoint_in(txn)?;
        Ok((
            checkpoint,
            self.decode_generation(txn.state_get(&self.generation)?)?,
        ))
    }

    /// The checkpoint and its generation in the newest commit.
    pub(crate) fn position(&self, store: &Arc<Store>) -> Result<(u64, u64)> {
        let mut view = store.snapshot()?;
        let checkpoint = self.checkpoint_in_view(&mut view)?;
        let generation = self.decode_generation(view.state_get(&self.generation)?)?;
        Ok((checkpoint, generation))
    }

    pub(super) fn decode_generation(&self, raw: Option<&[u8]>) -> Result<u64> {
        match raw {
            None => Ok(0),
            Some(raw) => raw
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Corruption {
                    location: Location::Record(format!(
                        "the checkpoint generation of projection {:?}",
                        self.name
                    )),
                    detail: format!("{} bytes, not 8", raw.len()),
                }),
        }
    }

    /// Raises the generation in `txn`; returns the new one.
    fn bump_generation(&self, txn: &mut WriteTxn<'_>) -> Result<u64> {
        let next = self
            .decode_generation(txn.state_get(&self.generation)?)?
            .wrapping_add(1);
        txn.state_put(&self.generation, &next.to_le_bytes())?;
        Ok(next)
    }

    /// The checkpoint as `view` sees it.
    pub(crate) fn checkpoint_in_view(&self, view: &mut View) -> Result<u64> {
        self.check_kind(view.state_get(&self.kind_key)?)?;
        let raw = view.state_get(&self.checkpoint)?;
        self.decode_checkpoint(raw)
    }

    /// The checkpoint in the newest commit.
    pub(crate) fn checkpoint(&self, store: &Arc<Store>) -> Result<u64> {
        self.checkpoint_in_view(&mut store.snapshot()?)
    }

    /// Writes the checkpoint, recording this namespace's kind for the name
    /// (or failing if the other kind holds it).
    pub(crate) fn write_checkpoint(&self, txn: &mut WriteTxn<'_>, next: u64) -> Result<()> {
        if !self.check_kind(txn.state_get(&self.kind_key)?)? {
            txn.state_put(&self.kind_key, self.kind.tag().as_bytes())?;
        }
        txn.state_put(&self.checkpoint, &next.to_le_bytes())?;
        self.bump_generation(txn).map(drop)
    }

    pub(crate) fn record_skip(&self, txn: &mut WriteTxn<'_>, at: u64, error: &str) -> Result<()> {
        let key = [self.skipped.as_slice(), &at.to_be_bytes()].concat();
        txn.state_put(&key, error.as_bytes())
    }

    /// Every event skipped so far, in global order.
    pub(crate) fn skipped(&self, store: &Arc<Store>) -> Result<Vec<Skipped>> {
        let mut view = store.snapshot()?;
        let mut out = Vec::new();
        let mut bad = None;
        view.state_for_each(&self.skipped, |k, v| {
            match k[self.skipped.len()..].try_into().map(u64::from_be_bytes) {
                Ok(at) => {
                    out.push(Skipped {
                        at: GlobalSequence(at),
                        error: String::from_utf8_lossy(v).into_owned(),
                    });
                    ControlFlow::Continue(())
                }
                Err(_) => {
                    bad = Some(k.len());
                    ControlFlow::Break(())
                }
            }
        })?;
        match bad {
            Some(len) => Err(Error::Corruption {
                location: Location::Record(format!(
                    "the skip records of projection {:?}",
                    self.name
                )),
                detail: format!("a key of {len} bytes"),
            }),
            None => Ok(out),
        }
    }

    /// Deletes the checkpoint, the read model and the skip records, as part
    /// of `txn`; a projection of the other kind is left alone (an error).
    pub(crate) fn clear(&self, txn: &mut WriteTxn<'_>) -> Result<()> {
        self.check_kind(txn.state_get(&self.kind_key)?)?;
        let generation = self.decode_generation(txn.state_get(&self.generation)?)?;
        txn.state_delete_prefix(&self.root)?;
        // The generation outlives the reset: a projector that read the
        // checkpoint before it must not find the same (checkpoint,
        // generation) after it.
        txn.state_put(&self.generation, &generation.wrapping_add(1).to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_cannot_nest() {
        assert!(Namespace::new("sales_by-product.v2", Kind::InStore).is_ok());
        assert!(Namespace::new(&"x".repeat(64), Kind::External).is_ok());
        for bad in ["", "a/b", "ventes é", &"x".repeat(65)] {
            assert!(
                matches!(
                    Namespace::new(bad, Kind::InStore),
                    Err(Error::InvalidProjectionName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_projection_prefix_never_covers_another() {
        let a = Namespace::new("a", Kind::InStore).unwrap();
        let ab = Namespace::new("ab", Kind::InStore).unwrap();
        assert!(!ab.root.starts_with(&a.root));
        assert!(a.model().starts_with(&a.root));
        assert!(!a.checkpoint.starts_with(a.model()));
    }
}

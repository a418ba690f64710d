//! Projections seen from outside their projectors: what the store records
//! of each (for tools such as `varvedb projections`, and health pages), and
//! a reset by name.

use std::ops::ControlFlow;

use super::namespace::{Kind, Namespace, Skipped};
use crate::error::{Error, Result};
use crate::position::GlobalSequence;
use crate::storage::View;
use crate::store::Varve;

/// The prefix of every projection's keys in the `state` database.
const ROOT: &[u8] = b"proj/";

/// Which projector a projection's checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectionKind {
    /// A [`Projector`](crate::Projector): the read model is in the store.
    InStore,
    /// An [`ExternalProjector`](crate::ExternalProjector): the sink is
    /// outside the store.
    External,
}

impl ProjectionKind {
    /// `in-store` or `external`, as the store records it.
    pub fn as_str(self) -> &'static str {
        Kind::from(self).tag()
    }
}

impl std::fmt::Display for ProjectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Kind> for ProjectionKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::InStore => ProjectionKind::InStore,
            Kind::External => ProjectionKind::External,
        }
    }
}

impl From<ProjectionKind> for Kind {
    fn from(kind: ProjectionKind) -> Self {
        match kind {
            ProjectionKind::InStore => Kind::InStore,
            ProjectionKind::External => Kind::External,
        }
    }
}

/// One projection as the store records it, listed by [`Varve::projections`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Which projector owns it; `None` when no checkpoint was written since
    /// it was created or last reset (only its generation is kept).
    pub kind: Option<ProjectionKind>,
    /// The next global sequence to apply: every event before it is applied
    /// (or filtered out, or skipped).
    pub checkpoint: GlobalSequence,
    /// Raised by every checkpoint write and every reset.
    pub generation: u64,
    /// Events between the checkpoint and the end of the log, in the same
    /// snapshot.
    pub lag: u64,
    /// Events skipped under [`OnError::Skip`](crate::OnError::Skip).
    pub skipped: u64,
    /// The newest of them, with its handler's error: the only failure the
    /// store records (a projector that stops on an error records nothing;
    /// its checkpoint stays on the failing event, which `lag` counts).
    pub last_failure: Option<Skipped>,
}

/// What [`Varve::reset_projection`] cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionReset {
    /// The projection's name.
    pub name: String,
    /// Its kind, if one was recorded.
    pub kind: Option<ProjectionKind>,
    /// The checkpoint before the reset (it is back at 0).
    pub checkpoint: GlobalSequence,
    /// Read-model entries deleted (always 0 for an external projection,
    /// whose sink the store cannot reach).
    pub model_entries: u64,
    /// Skip records deleted.
    pub skipped: u64,
    /// The generation after the reset.
    pub generation: u64,
}

impl Varve {
    /// Every projection the store records (in-store and external), in name
    /// order, with its checkpoint, generation, lag behind the end of the
    /// log and the failures it recorded, from one snapshot. Works on a
    /// read-only store beside the application (`varvedb projections`).
    ///
    /// The walk seeks from one projection's keys to the next, so a large
    /// read model is not read; each projection's skip records are counted.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Sold { units: u32 }
    /// use varvedb::{GlobalEvent, HandlerError, Projection, ProjectionKind, ReadModel, StreamId};
    ///
    /// struct Count;
    /// impl Projection for Count {
    ///     fn apply(&mut self, _: &GlobalEvent, model: &mut ReadModel<'_, '_>) -> Result<(), HandlerError> {
    ///         let n = model.get_u64(b"n")?.unwrap_or(0);
    ///         Ok(model.put_u64(b"n", n + 1)?)
    ///     }
    /// }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut sales = varve.stream::<Sold, 16>("sales")?;
    /// sales.append(StreamId(1), &Sold { units: 1 })?;
    /// varve.projector("count", Count)?.catch_up()?;
    /// sales.append(StreamId(1), &Sold { units: 2 })?;
    ///
    /// let listed = varve.projections()?;
    /// assert_eq!(listed[0].name, "count");
    /// assert_eq!(listed[0].kind, Some(ProjectionKind::InStore));
    /// assert_eq!((listed[0].checkpoint.0, listed[0].lag), (1, 1));
    ///
    /// // Back to the start, its model cleared, in one transaction.
    /// let reset = varve.reset_projection("count")?;
    /// assert_eq!((reset.checkpoint.0, reset.model_entries), (1, 1));
    /// assert_eq!(varve.projections()?[0].lag, 2);
    /// assert!(varve.reset_projection("nothing").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn projections(&self) -> Result<Vec<ProjectionStatus>> {
        let mut view = self.store().snapshot()?;
        let head = view.end_global()?;
        let mut out = Vec::new();
        let mut from = ROOT.to_vec();
        while let Some(key) = view.state_seek(&from)? {
            let Some(rest) = key.strip_prefix(ROOT) else {
                break;
            };
            let name = match rest.iter().position(|&b| b == b'/') {
                Some(end) => &rest[..end],
                None => rest,
            };
            // The next name: past every key of this one (`/` + 1 is `0`).
            from = [ROOT, name, b"0"].concat();
            // Names are ASCII (see `Namespace::new`): any other key under
            // `proj/` is not a projection's.
            let Some(ns) = std::str::from_utf8(name)
                .ok()
                .and_then(|name| Namespace::new(name, Kind::InStore).ok())
            else {
                continue;
            };
            out.push(status(&mut view, &ns, head)?);
        }
        Ok(out)
    }

    /// The projection `name` as [`Varve::projections`] lists it, or `None`
    /// if the store records nothing of it.
    ///
    /// # Errors
    /// [`Error::InvalidProjectionName`]; storage errors.
    pub fn projection_status(&self, name: &str) -> Result<Option<ProjectionStatus>> {
        let ns = Namespace::new(name, Kind::InStore)?;
        let mut view = self.store().snapshot()?;
        let head = view.end_global()?;
        if !recorded(&mut view, &ns)? {
            return Ok(None);
        }
        status(&mut view, &ns, head).map(Some)
    }

    /// Resets the projection `name` without its projector (an operator's
    /// `varvedb projections reset NAME --write`): deletes its checkpoint,
    /// kind and skip records and, for an in-store projection, its read
    /// model, and raises its generation, all in one write transaction. Its
    /// projector starts over from the first event at its next run.
    ///
    /// A projector of the name running meanwhile (in any process) is not
    /// misled: an in-store one reads its checkpoint in each batch's
    /// transaction, so its next batch starts from 0; an external one fails
    /// its next checkpoint write with
    /// [`Error::CheckpointMoved`](crate::Error::CheckpointMoved) (the
    /// generation moved). An external projection's sink, outside the store,
    /// is not emptied: its events are delivered again from the first, which
    /// at-least-once delivery allows; empty it with
    /// [`ExternalProjector::reset`](crate::ExternalProjector::reset) instead
    /// where the sink cannot take that.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`] if the store records nothing of `name`
    /// (nothing is written); [`Error::InvalidProjectionName`];
    /// [`Error::ReadOnly`] on a read-only handle; storage errors.
    pub fn reset_projection(&self, name: &str) -> Result<ProjectionReset> {
        let ns = Namespace::new(name, Kind::InStore)?;
        let store = self.store();
        store.write(|w| {
            let kind_raw = w.state_get(&ns.kind_key)?.map(<[u8]>::to_vec);
            let checkpoint_raw = w.state_get(&ns.checkpoint)?.map(<[u8]>::to_vec);
            let generation_raw = w.state_get(&ns.generation)?.map(<[u8]>::to_vec);
            if kind_raw.is_none() && checkpoint_raw.is_none() && generation_raw.is_none() {
                return Err(Error::UnknownProjection {
                    path: store.path().to_path_buf(),
                    name: name.to_owned(),
                });
            }
            let kind = kind_raw.as_deref().map(|k| ns.decode_kind(k)).transpose()?;
            let checkpoint = ns.decode_checkpoint(checkpoint_raw.as_deref())?;
            let generation = ns.decode_generation(generation_raw.as_deref())?;
            let owner = ns.with_kind(kind.unwrap_or(Kind::InStore));
            let model_entries = w.state_delete_prefix(owner.model())? as u64;
            let skipped = w.state_delete_prefix(&owner.skipped)? as u64;
            owner.clear(w)?;
            Ok(ProjectionReset {
                name: name.to_owned(),
                kind: kind.map(ProjectionKind::from),
                checkpoint: GlobalSequence(checkpoint),
                model_entries,
                skipped,
                generation: generation.wrapping_add(1),
            })
        })
    }
}

/// Whether `view` holds any of the keys a projection always has (its
/// checkpoint, kind or generation).
fn recorded(view: &mut View, ns: &Namespace) -> Result<bool> {
    Ok(view.state_get(&ns.checkpoint)?.is_some()
        || view.state_get(&ns.kind_key)?.is_some()
        || view.state_get(&ns.generation)?.is_some())
}

/// What `view` records of `ns`'s projection; `head` is the log's end.
fn status(view: &mut View, ns: &Namespace, head: u64) -> Result<ProjectionStatus> {
    let kind = match view.state_get(&ns.kind_key)? {
        Some(raw) => Some(ns.decode_kind(raw)?),
        None => None,
    };
    let checkpoint = ns.decode_checkpoint(view.state_get(&ns.checkpoint)?)?;
    let generation = ns.decode_generation(view.state_get(&ns.generation)?)?;
    let mut skipped = 0;
    view.state_for_each(&ns.skipped, |_, _| {
        skipped += 1;
        ControlFlow::Continue(())
    })?;
    let last_failure = match view.state_last(&ns.skipped)? {
        Some((key, error)) => Some(Skipped {
            at: GlobalSequence(ns.skip_position(&key)?),
            error: String::from_utf8_lossy(&error).into_owned(),
        }),
        None => None,
    };
    Ok(ProjectionStatus {
        name: ns.name().to_owned(),
        kind: kind.map(ProjectionKind::from),
        checkpoint: GlobalSequence(checkpoint),
        generation,
        lag: head.saturating_sub(checkpoint),
        skipped,
        last_failure,
    })
}

//! Projections seen from outside their projectors: what the store records
//! of each (for tools such as `varvedb projections`, and health pages), and
//! a reset by name.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::namespace::{Kind, Namespace, Skipped};
use crate::error::{Error, Result};
use crate::position::GlobalSequence;
use crate::storage::{Store, View};

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

/// One projection as the store records it, listed by
/// [`Varve::projections`](crate::Varve::projections).
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

/// What [`Varve::reset_projection`](crate::Varve::reset_projection) cleared.
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

/// Every projection `store` records, in name order (see
/// [`Varve::projections`](crate::Varve::projections)).
pub(crate) fn list(store: &Arc<Store>) -> Result<Vec<ProjectionStatus>> {
    let mut view = store.snapshot()?;
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

/// The projection `name` as [`list`] shows it, or `None` if `store`
/// records nothing of it.
pub(crate) fn status_of(store: &Arc<Store>, name: &str) -> Result<Option<ProjectionStatus>> {
    let ns = Namespace::new(name, Kind::InStore)?;
    let mut view = store.snapshot()?;
    let head = view.end_global()?;
    if !recorded(&mut view, &ns)? {
        return Ok(None);
    }
    status(&mut view, &ns, head).map(Some)
}

/// Resets the projection `name` in one write transaction (see
/// [`Varve::reset_projection`](crate::Varve::reset_projection)).
pub(crate) fn reset(store: &Arc<Store>, name: &str) -> Result<ProjectionReset> {
    let ns = Namespace::new(name, Kind::InStore)?;
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

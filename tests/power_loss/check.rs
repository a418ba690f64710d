//! What a store image must be after a power cut, checked in a child process.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use varvedb::{GlobalSequence, StreamId, Varve, VarveConfig};

use super::workload::{archived_bytes, big_events, written, Ack, Counts, Tally, Written};

/// The verdict on one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Opened, verified clean, every event whole and as written; `lost` of
    /// the acknowledged appends are absent (wholly), the rest present.
    Sound { events: u64, lost: u64 },
    /// Refused at open, or `verify()`/a read returned a typed error.
    Typed(String),
    /// `verify()` ran and reported problems.
    Unverified(String),
    /// A read returned something that is not what was written, a gap, a
    /// partial batch, or an acknowledged append at another position.
    Wrong(String),
    /// The checker process died (signal or exit code).
    Crashed(String),
}

impl Outcome {
    pub fn encode(&self) -> String {
        match self {
            Outcome::Sound { events, lost } => format!("sound {events} {lost}"),
            Outcome::Typed(m) => format!("typed {}", one_line(m)),
            Outcome::Unverified(m) => format!("unverified {}", one_line(m)),
            Outcome::Wrong(m) => format!("wrong {}", one_line(m)),
            Outcome::Crashed(m) => format!("crashed {}", one_line(m)),
        }
    }

    pub fn decode(s: &str) -> Outcome {
        let (kind, rest) = s.split_once(' ').unwrap_or((s, ""));
        match kind {
            "sound" => {
                let (e, l) = rest.split_once(' ').expect("two numbers");
                Outcome::Sound {
                    events: e.parse().expect("events"),
                    lost: l.parse().expect("lost"),
                }
            }
            "typed" => Outcome::Typed(rest.into()),
            "unverified" => Outcome::Unverified(rest.into()),
            "wrong" => Outcome::Wrong(rest.into()),
            "crashed" => Outcome::Crashed(rest.into()),
            other => panic!("unknown outcome {other:?}"),
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Opens the image in `dir` and checks it against the acknowledgements made
/// before the cut.
pub fn check(dir: &Path, workload: &str, acks: &[Ack]) -> Outcome {
    let config = VarveConfig {
        map_size: 64 * 1024,
        ..VarveConfig::default()
    };
    let varve = match Varve::with_config(dir, config) {
        Ok(v) => v,
        Err(e) => return Outcome::Typed(format!("open: {e}")),
    };
    match varve.verify() {
        Err(e) => return Outcome::Typed(format!("verify: {e}")),
        Ok(report) if !report.is_ok() => {
            return Outcome::Unverified(format!("{:?}", report.problems.first()))
        }
        Ok(_) => {}
    }
    match read_back(&varve, workload, acks) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Typed(format!("read: {e}")),
    }
}

fn read_back(varve: &Varve, workload: &str, acks: &[Ack]) -> varvedb::Result<Outcome> {
    let big = big_events(workload);
    // Every event, in global order: dense, as written, batches whole.
    let reader = varve.global_reader();
    let mut next_global = 0u64;
    let mut stream_next: HashMap<(String, u64), u64> = HashMap::new();
    // nonce -> (first global, count seen, count, stream, id)
    let mut batches: BTreeMap<u64, (u64, u32, u32, String, u64)> = BTreeMap::new();
    let mut tallies: BTreeMap<u64, Tally> = BTreeMap::new();
    let mut open_batch: Option<u64> = None;
    for entry in reader.iter_from(GlobalSequence(0))? {
        let event = entry?;
        let global = event.global_sequence().0;
        if global != next_global {
            return Ok(Outcome::Wrong(format!(
                "global {global} after {next_global}: a gap"
            )));
        }
        next_global += 1;
        let key = (event.stream_name().to_string(), event.stream_id().0);
        let expected_seq = stream_next.entry(key.clone()).or_insert(0);
        if event.stream_sequence().0 != *expected_seq {
            return Ok(Outcome::Wrong(format!(
                "{key:?} sequence {} where {} was next",
                event.stream_sequence().0,
                expected_seq
            )));
        }
        *expected_seq += 1;
        let archived = event.archived::<Written>()?;
        let (nonce, index, count) = (
            archived.nonce.to_native(),
            archived.index.to_native(),
            archived.count.to_native(),
        );
        let want = written(nonce, index, count, big);
        if event.payload() != archived_bytes(&want).as_slice() {
            return Ok(Outcome::Wrong(format!(
                "event {global} is not what was written"
            )));
        }
        if key.0 == "tallies" {
            tallies
                .entry(key.1)
                .or_default()
                .fold(nonce, index, want.body.len());
        }
        match (open_batch, index) {
            (None, 0) => {
                batches.insert(nonce, (global, 1, count, key.0, key.1));
            }
            (Some(open), i) if open == nonce && i == batches[&nonce].1 => {
                batches.get_mut(&nonce).expect("open batch").1 += 1;
            }
            _ => {
                return Ok(Outcome::Wrong(format!(
                    "event {global} ({nonce}, {index}/{count}) breaks a batch"
                )))
            }
        }
        let b = &batches[&nonce];
        open_batch = (b.1 < b.2).then_some(nonce);
    }
    if let Some(nonce) = open_batch {
        return Ok(Outcome::Wrong(format!("batch {nonce} is partial")));
    }
    // Every acknowledged append: present whole where it was acknowledged, or
    // (for the weaker modes) absent wholly, and then so is every append
    // committed after it (threads may acknowledge out of commit order).
    let mut acks = acks.to_vec();
    acks.sort_by_key(|a| a.first_global);
    let mut lost = 0;
    for ack in &acks {
        if lost > 0 && batches.contains_key(&ack.nonce) {
            return Ok(Outcome::Wrong(format!(
                "append {} is present but an acknowledged append committed before it is lost",
                ack.nonce
            )));
        }
        match batches.get(&ack.nonce) {
            Some((first, _, count, stream, id)) => {
                if (*first, *count, stream.as_str(), *id)
                    != (ack.first_global, ack.count, ack.stream.as_str(), ack.id)
                {
                    return Ok(Outcome::Wrong(format!(
                        "append {} acknowledged at {} found at {first}",
                        ack.nonce, ack.first_global
                    )));
                }
            }
            None => lost += 1,
        }
    }
    // Aggregates load (from their snapshots) to the fold of their events.
    if workload == "aggregate" {
        for (id, want) in &tallies {
            let loaded = varve.load::<Tally>(StreamId(*id))?;
            if &loaded.state != want {
                return Ok(Outcome::Wrong(format!(
                    "aggregate {id} loads as {:?}, its events fold to {want:?}",
                    loaded.state
                )));
            }
        }
    }
    // The projection's model agrees with its checkpoint, and catches up.
    if workload == "projection" {
        let mut model = varve.read_model("counts")?;
        let checkpoint = model.checkpoint()?.0;
        let applied = model.get_u64(b"events")?.unwrap_or(0);
        if applied != checkpoint || checkpoint > next_global {
            return Ok(Outcome::Wrong(format!(
                "projection checkpoint {checkpoint} with {applied} events applied, log end {next_global}"
            )));
        }
        drop(model);
        let mut projector = varve.projector("counts", Counts)?;
        let end = projector.catch_up()?.0;
        if end != next_global {
            return Ok(Outcome::Wrong(format!(
                "projection caught up to {end}, log end {next_global}"
            )));
        }
    }
    // And the store takes the next append.
    let mut stream = varve.stream::<Written, 1024>("after")?;
    let global = stream
        .append(StreamId(0), &written(u64::MAX, 0, 1, false))?
        .1
         .0;
    if global != next_global {
        return Ok(Outcome::Wrong(format!(
            "the next append landed at {global}, log end {next_global}"
        )));
    }
    Ok(Outcome::Sound {
        events: next_global,
        lost,
    })
}

//! Walks every database of a store in one snapshot and reports each problem
//! with its position: damaged blocks, gaps or overlaps in the global log, gaps
//! in a stream id's sequences, index runs that disagree with the log, events
//! of streams missing from the catalog.

use std::collections::{BTreeMap, HashMap};

use heed::RoTxn;

use super::block::BlockView;
use super::keys::{parse_event_key, parse_index_key, Run};
use super::Store;
use crate::error::{Location, Result};
use crate::position::GlobalSequence;
use crate::verify::{Problem, VerifyReport};

/// Per stream id, what the log holds: `first stream sequence -> (first global, count)`
/// for each block.
type Blocks = HashMap<(u32, u64), BTreeMap<u64, (u64, u64)>>;

impl Store {
    pub(crate) fn verify(&self, txn: &RoTxn) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut problem = |location: Location, detail: String| {
            report.problems.push(Problem { location, detail });
        };
        let err = self.err("verifying the store");

        // Catalog: tag -> name, both directions present.
        let mut tags = HashMap::new();
        for item in self.catalog.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            if k.first() == Some(&b't') && k.len() == 5 {
                let tag = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                tags.insert(tag, String::from_utf8_lossy(v).into_owned());
            }
        }
        let mut streams = 0u64;
        for tag in tags.keys() {
            match self.stream_by_tag(txn, *tag) {
                Ok(_) => streams += 1,
                Err(e) => problem(
                    Location::Record(format!("catalog tag {tag}")),
                    e.to_string(),
                ),
            }
        }

        // Log: dense, each block intact, each stream id's sequences dense.
        let mut blocks: Blocks = HashMap::new();
        let mut next_global = 0u64;
        let mut events = 0u64;
        let mut block_count = 0u64;
        for item in self.events.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            block_count += 1;
            let Some(key) = parse_event_key(k) else {
                problem(
                    Location::Record("the event log".into()),
                    format!("malformed key of {} bytes", k.len()),
                );
                continue;
            };
            let at = Location::Global(GlobalSequence(key));
            if key != next_global {
                problem(
                    at.clone(),
                    format!("the log jumps from global sequence {next_global} to {key}"),
                );
            }
            let view = match BlockView::parse(key, v) {
                Ok(view) => view,
                Err(e) => {
                    problem(at, e.0);
                    next_global = key.saturating_add(1);
                    continue;
                }
            };
            let h = *view.header();
            next_global = h.end_global();
            if !tags.contains_key(&h.stream_tag) {
                problem(
                    at.clone(),
                    format!(
                        "block names stream tag {} missing from the catalog",
                        h.stream_tag
                    ),
                );
            }
            for i in 0..h.count {
                match view.event(i) {
                    Ok(_) => events += 1,
                    Err(e) => problem(Location::Global(GlobalSequence(key + u64::from(i))), e.0),
                }
            }
            blocks
                .entry((h.stream_tag, h.stream_id))
                .or_default()
                .insert(h.first_stream_seq, (h.first_global, u64::from(h.count)));
        }

        // Stream ids: blocks cover 0.. densely, in increasing global order.
        for ((tag, id), list) in &blocks {
            let mut expect = 0u64;
            let mut last_global = None;
            for (&first_seq, &(first_global, count)) in list {
                if first_seq != expect {
                    problem(
                        Location::Global(GlobalSequence(first_global)),
                        format!(
                            "stream tag {tag} id {id} jumps from sequence {expect} to {first_seq}"
                        ),
                    );
                }
                if last_global.is_some_and(|g| g >= first_global) {
                    problem(
                        Location::Global(GlobalSequence(first_global)),
                        format!(
                            "stream tag {tag} id {id}: sequence order disagrees with global order"
                        ),
                    );
                }
                last_global = Some(first_global);
                expect = first_seq + count;
            }
        }

        // Index: every run agrees with the blocks, and runs cover each id exactly.
        let mut covered: HashMap<(u32, u64), u64> = HashMap::new();
        for item in self.index.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            report.runs += 1;
            let Some((tag, id, first)) = parse_index_key(k) else {
                problem(
                    Location::Record("the stream index".into()),
                    format!("malformed key of {} bytes", k.len()),
                );
                continue;
            };
            let at = Location::Record(format!(
                "stream index run (tag {tag}, id {id}, from {first})"
            ));
            let Some(run) = Run::decode(k, first, v) else {
                problem(at, "malformed run or checksum mismatch".into());
                continue;
            };
            let seen = covered.entry((tag, id)).or_insert(0);
            if run.first_seq != *seen {
                problem(
                    at.clone(),
                    format!(
                        "run starts at sequence {} but the previous run ended at {seen}",
                        run.first_seq
                    ),
                );
            }
            *seen = run.end_seq();
            if !run_matches(blocks.get(&(tag, id)), &run) {
                problem(at, "the run disagrees with the blocks in the log".into());
            }
        }
        for ((tag, id), list) in &blocks {
            let total: u64 = list.values().map(|(_, c)| c).sum();
            if covered.get(&(*tag, *id)).copied().unwrap_or(0) != total {
                problem(
                    Location::Record(format!("stream index of tag {tag} id {id}")),
                    format!(
                        "the index covers {} events, the log holds {total}",
                        covered.get(&(*tag, *id)).copied().unwrap_or(0)
                    ),
                );
            }
        }

        report.events = events;
        report.blocks = block_count;
        report.streams = streams;
        Ok(report)
    }
}

/// Whether every event of `run` sits in a block of the same id at the global
/// sequence the run says.
fn run_matches(blocks: Option<&BTreeMap<u64, (u64, u64)>>, run: &Run) -> bool {
    let Some(blocks) = blocks else { return false };
    let mut seq = run.first_seq;
    while seq < run.end_seq() {
        let Some((&block_seq, &(block_global, count))) = blocks.range(..=seq).next_back() else {
            return false;
        };
        if seq >= block_seq + count {
            return false;
        }
        let global = block_global + (seq - block_seq);
        if global != run.first_global + (seq - run.first_seq) {
            return false;
        }
        seq = (block_seq + count).min(run.end_seq());
    }
    true
}

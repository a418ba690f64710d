//! Reading a store written by varvedb 0.4 (read-only), for
//! [`Varve::import_v04`](crate::Varve::import_v04).
//!
//! 0.4.2's layout, in LMDB named databases of one environment (`data.mdb`):
//!
//! ```text
//! global_events          global u64 BE -> name len u8 | name | id u64 BE | seq u64 BE | payload
//! stream:<name>:index    id u64 BE | seq u64 BE -> global u64 BE
//! stream:<name>:meta     id u64 BE -> next seq u64 BE
//! ```
//!
//! The payload is the rkyv archive of the event, as the application
//! serialized it. 0.4 reserved global sequences before committing, so its
//! log may have holes; its records carry no checksum.
//!
//! Nothing here writes: the environment is opened `MDB_RDONLY`.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

type Db = Database<'static, Bytes, Bytes>;

use crate::error::{Error, Result};

const GLOBAL_EVENTS: &str = "global_events";
const STREAM_PREFIX: &str = "stream:";
const INDEX_SUFFIX: &str = ":index";

/// One event of a 0.4 log, borrowed from its read transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LegacyRecord<'a> {
    pub(crate) global: u64,
    pub(crate) stream: &'a str,
    pub(crate) id: u64,
    pub(crate) seq: u64,
    pub(crate) payload: &'a [u8],
}

/// A varvedb 0.4 store, open read-only.
pub(crate) struct LegacyStore {
    path: PathBuf,
    env: Env<WithoutTls>,
    global: Db,
    /// `(stream name, its index database)`, in name order.
    indexes: Vec<(String, Db)>,
}

impl LegacyStore {
    /// Opens the 0.4 store in directory `path` read-only. Anything that is
    /// not one (no `data.mdb`, no `global_events` database) is
    /// [`Error::LegacyDamaged`] saying so.
    pub(crate) fn open(path: &Path) -> Result<LegacyStore> {
        let damaged = |detail: String| Error::LegacyDamaged {
            path: path.to_path_buf(),
            detail,
        };
        let data = path.join("data.mdb");
        let size = match std::fs::metadata(&data) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(damaged("data.mdb is not a file".into())),
            Err(e) => return Err(damaged(format!("cannot read {}: {e}", data.display()))),
        };
        let page = 64 * 1024;
        let map_size = (size as usize).max(page).div_ceil(page) * page;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        // 0.4 made two databases per stream name (and allowed 64 by default,
        // more if configured): room for any store it can have written.
        options.map_size(map_size).max_dbs(32 * 1024);
        // SAFETY: READ_ONLY changes no safety contract (it only makes LMDB
        // refuse write transactions, which this type never starts).
        unsafe { options.flags(EnvFlags::READ_ONLY) };
        // SAFETY: mapping the file is sound only if nothing truncates it
        // while mapped: the import's contract is that no 0.4 program writes
        // the store meanwhile (0.4 only ever grows its file under LMDB's
        // lock, which this open takes part in).
        let env = unsafe { options.open(path) }
            .map_err(|e| damaged(format!("LMDB cannot open it: {e}")))?;
        let lmdb = |what: &'static str| move |e: heed::Error| damaged(format!("{what}: {e}"));
        // heed hands out databases through a committed read transaction.
        let open = |name: Option<&str>| -> Result<Option<Db>> {
            let shown = name.unwrap_or("main");
            let rtxn = env
                .read_txn()
                .map_err(|e| damaged(format!("opening database {shown:?}: {e}")))?;
            env.open_databases_and_commit(rtxn, |opener, rtxn| {
                opener
                    .open_database::<Bytes, Bytes>(rtxn, name)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .map(|c| c.unwrap_commit())
            .map_err(|e| damaged(format!("opening database {shown:?}: {e}")))
        };
        let main = open(None)?.ok_or_else(|| damaged("it has no main database".into()))?;
        let mut names = Vec::new();
        {
            let rtxn = env.read_txn().map_err(lmdb("starting a read"))?;
            for entry in main.iter(&rtxn).map_err(lmdb("listing its databases"))? {
                let (k, _) = entry.map_err(lmdb("listing its databases"))?;
                if let Ok(name) = std::str::from_utf8(k) {
                    names.push(name.to_string());
                }
            }
        }
        if !names.iter().any(|n| n == GLOBAL_EVENTS) {
            return Err(damaged(
                "it has no global_events database: not a varvedb 0.4 store".into(),
            ));
        }
        let open_named = |name: &str| -> Result<Db> {
            open(Some(name))?.ok_or_else(|| damaged(format!("database {name:?} vanished")))
        };
        let global = open_named(GLOBAL_EVENTS)?;
        let mut indexes = Vec::new();
        for name in &names {
            if let Some(stream) = name
                .strip_prefix(STREAM_PREFIX)
                .and_then(|s| s.strip_suffix(INDEX_SUFFIX))
            {
                indexes.push((stream.to_string(), open_named(name)?));
            }
        }
        Ok(LegacyStore {
            path: path.to_path_buf(),
            env,
            global,
            indexes,
        })
    }

    fn damaged(&self, detail: String) -> Error {
        Error::LegacyDamaged {
            path: self.path.clone(),
            detail,
        }
    }

    /// Calls `f` with each event of the log in global order, until it breaks.
    /// A record that does not decode is [`Error::LegacyDamaged`].
    pub(crate) fn for_each(
        &self,
        mut f: impl FnMut(LegacyRecord<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let lmdb = |e: heed::Error| self.damaged(format!("reading global_events: {e}"));
        let rtxn = self.env.read_txn().map_err(lmdb)?;
        for entry in self.global.iter(&rtxn).map_err(lmdb)? {
            let (k, v) = entry.map_err(lmdb)?;
            let global = match <[u8; 8]>::try_from(k) {
                Ok(k) => u64::from_be_bytes(k),
                Err(_) => {
                    return Err(self.damaged(format!("a global_events key of {} bytes", k.len())))
                }
            };
            let record = decode(global, v).map_err(|why| {
                self.damaged(format!("the record at global sequence {global}: {why}"))
            })?;
            if f(record)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Checks every stream index against the log: each entry must point at
    /// a record of its stream, id and sequence, and the indexes together
    /// must count as many events as the log. Returns the events per stream.
    pub(crate) fn check_indexes(&self) -> Result<HashMap<String, u64>> {
        let lmdb = |e: heed::Error| self.damaged(format!("reading a stream index: {e}"));
        let rtxn = self.env.read_txn().map_err(lmdb)?;
        let mut counts = HashMap::new();
        let mut total = 0u64;
        for (stream, index) in &self.indexes {
            let mut count = 0u64;
            for entry in index.iter(&rtxn).map_err(lmdb)? {
                let (k, v) = entry.map_err(lmdb)?;
                let bad =
                    |why: String| self.damaged(format!("the index of stream {stream:?}: {why}"));
                let (Ok(k), Ok(v)) = (<[u8; 16]>::try_from(k), <[u8; 8]>::try_from(v)) else {
                    return Err(bad(format!(
                        "an entry of {} key and {} value bytes",
                        k.len(),
                        v.len()
                    )));
                };
                let id = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                let seq = u64::from_be_bytes(k[8..].try_into().unwrap_or_default());
                let global = u64::from_be_bytes(v);
                let raw = self
                    .global
                    .get(&rtxn, &global.to_be_bytes())
                    .map_err(lmdb)?
                    .ok_or_else(|| {
                        bad(format!(
                            "id {id} sequence {seq} points at global sequence {global}, \
                             which the log does not hold"
                        ))
                    })?;
                let record = decode(global, raw).map_err(|why| {
                    self.damaged(format!("the record at global sequence {global}: {why}"))
                })?;
                if record.stream != stream || record.id != id || record.seq != seq {
                    return Err(bad(format!(
                        "id {id} sequence {seq} points at global sequence {global}, \
                         which holds stream {:?} id {} sequence {}",
                        record.stream, record.id, record.seq
                    )));
                }
                count += 1;
            }
            total += count;
            counts.insert(stream.clone(), count);
        }
        let logged = self.global.len(&rtxn).map_err(lmdb)?;
        if logged != total {
            return Err(self.damaged(format!(
                "the log holds {logged} events, the stream indexes {total}"
            )));
        }
        Ok(counts)
    }

    /// Events in the log.
    pub(crate) fn len(&self) -> Result<u64> {
        let lmdb = |e: heed::Error| self.damaged(format!("reading global_events: {e}"));
        let rtxn = self.env.read_txn().map_err(lmdb)?;
        self.global.len(&rtxn).map_err(lmdb)
    }
}

/// Decodes a `global_events` record (see the module docs).
fn decode(global: u64, v: &[u8]) -> std::result::Result<LegacyRecord<'_>, String> {
    let (&len, rest) = v.split_first().ok_or("an empty record")?;
    let len = usize::from(len);
    if rest.len() < len + 16 {
        return Err(format!(
            "{} bytes, too short for a stream name of {len} bytes and its id and sequence",
            v.len()
        ));
    }
    let (name, rest) = rest.split_at(len);
    let stream = std::str::from_utf8(name).map_err(|_| "the stream name is not UTF-8")?;
    let (id, rest) = rest.split_at(8);
    let (seq, payload) = rest.split_at(8);
    Ok(LegacyRecord {
        global,
        stream,
        id: u64::from_be_bytes(id.try_into().map_err(|_| "a short id")?),
        seq: u64::from_be_bytes(seq.try_into().map_err(|_| "a short sequence")?),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_into_name_id_sequence_and_payload() {
        let mut v = vec![3];
        v.extend_from_slice(b"abc");
        v.extend_from_slice(&7u64.to_be_bytes());
        v.extend_from_slice(&2u64.to_be_bytes());
        v.extend_from_slice(&[9, 9]);
        let r = decode(5, &v).unwrap();
        assert_eq!(
            (r.global, r.stream, r.id, r.seq, r.payload),
            (5, "abc", 7, 2, &[9u8, 9][..])
        );
    }

    #[test]
    fn short_or_non_utf8_records_are_refused_without_panicking() {
        assert!(decode(0, &[]).is_err());
        assert!(decode(0, &[200, 1, 2]).is_err());
        let mut v = vec![1, 0xff];
        v.extend_from_slice(&[0; 16]);
        assert!(decode(0, &v).unwrap_err().contains("UTF-8"));
        for cut in 0..v.len() {
            let _ = decode(0, &v[..cut]);
        }
    }
}

//! The backend seam: the key-value operations the engine performs on its
//! logical databases (`meta`, `catalog`, `index`, `events`, `state`, `ids`,
//! `keys`, `chain`, `seals`), over LMDB or (feature `postgres`) PostgreSQL.
//!
//! Everything above this module (blocks, runs, the catalog, the writer's
//! sequence logic, checksums) is written once: a [`Table`] is one logical
//! database and a [`Txn`] one transaction of either engine. The LMDB arms
//! come first and call heed directly (the same calls as before the seam, one
//! `match` on an enum more); the PostgreSQL arms call
//! [`postgres`](super::postgres). Both hand out `&'t [u8]` borrowed from the
//! transaction: LMDB's map pages, or the PostgreSQL transaction's arena of
//! aligned copies, which lives as long as the transaction.
//!
//! Errors stay heed's type, so the callers' error mapping is unchanged: a
//! PostgreSQL failure travels as `heed::Error::Io` wrapping
//! [`ServerFailure`](super::postgres::ServerFailure), which
//! [`engine_error`](super::engine_error) recognizes.

use heed::types::Bytes;
use heed::{Database, MdbError, PutFlags, RoTxn, RwTxn, WithoutTls};

/// An LMDB database of the store.
pub(crate) type Db = Database<'static, Bytes, Bytes>;

/// A key-value pair borrowed from a transaction.
pub(crate) type Pair<'t> = (&'t [u8], &'t [u8]);

/// One transaction of either engine.
pub(crate) enum Txn<'e> {
    /// An LMDB read transaction.
    Ro(RoTxn<'e, WithoutTls>),
    /// An LMDB write transaction.
    Rw(RwTxn<'e>),
    /// A PostgreSQL transaction (a read snapshot or a write transaction).
    #[cfg(feature = "postgres")]
    Pg(super::postgres::PgTxn),
}

/// The error an engine returns for a write through a read transaction (a
/// bug: writers only ever get write transactions).
fn not_writable() -> heed::Error {
    heed::Error::Mdb(MdbError::BadTxn)
}

impl<'e> Txn<'e> {
    /// The LMDB read view of this transaction.
    #[inline]
    pub(crate) fn lmdb(&self) -> heed::Result<&RoTxn<'e, WithoutTls>> {
        match self {
            Txn::Ro(t) => Ok(t),
            Txn::Rw(t) => Ok(t),
            #[cfg(feature = "postgres")]
            Txn::Pg(_) => Err(heed::Error::Mdb(MdbError::Incompatible)),
        }
    }

    /// The LMDB write transaction, for writes.
    #[inline]
    pub(crate) fn lmdb_mut(&mut self) -> heed::Result<&mut RwTxn<'e>> {
        match self {
            Txn::Rw(t) => Ok(t),
            _ => Err(not_writable()),
        }
    }

    /// The transaction's id: LMDB's, or for PostgreSQL the store's commit
    /// counter as this transaction saw it when it began.
    pub(crate) fn id(&self) -> usize {
        match self {
            Txn::Ro(t) => t.id(),
            Txn::Rw(t) => t.id(),
            #[cfg(feature = "postgres")]
            Txn::Pg(t) => t.id(),
        }
    }

    /// Commits a write transaction (a read transaction just ends).
    pub(crate) fn commit(self) -> heed::Result<()> {
        match self {
            // A read transaction has nothing to commit: it ends (aborts).
            Txn::Ro(t) => {
                drop(t);
                Ok(())
            }
            Txn::Rw(t) => t.commit(),
            #[cfg(feature = "postgres")]
            Txn::Pg(t) => t.commit(),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pg(&self) -> Option<&super::postgres::PgTxn> {
        match self {
            Txn::Pg(t) => Some(t),
            _ => None,
        }
    }
}

/// One logical database of the store.
#[derive(Clone, Copy)]
pub(crate) enum Table {
    /// An LMDB database.
    Lmdb(Db),
    /// A PostgreSQL table.
    #[cfg(feature = "postgres")]
    Pg(super::postgres::PgTable),
}

/// An iterator over a table: heed's, or the rows a PostgreSQL query fetched.
pub(crate) enum Iter<'t, L> {
    Lmdb(L),
    #[cfg(feature = "postgres")]
    Pg(std::vec::IntoIter<Pair<'t>>),
    #[cfg(not(feature = "postgres"))]
    #[allow(dead_code)]
    Never(std::marker::PhantomData<&'t ()>, std::convert::Infallible),
}

impl<'t, L: Iterator<Item = heed::Result<Pair<'t>>>> Iterator for Iter<'t, L> {
    type Item = heed::Result<Pair<'t>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Lmdb(it) => it.next(),
            #[cfg(feature = "postgres")]
            Iter::Pg(it) => it.next().map(Ok),
            #[cfg(not(feature = "postgres"))]
            Iter::Never(_, never) => match *never {},
        }
    }
}

/// Dispatches `$lmdb` (with `$db` the heed database and `$t` the LMDB
/// transaction) or `$pg` (with `$p` the PostgreSQL table and `$x` the
/// PostgreSQL transaction).
macro_rules! dispatch {
    ($self:expr, $txn:expr, |$db:ident, $t:ident| $lmdb:expr, |$p:ident, $x:ident| $pg:expr) => {
        match $self {
            Table::Lmdb($db) => {
                let $t = $txn.lmdb()?;
                $lmdb
            }
            #[cfg(feature = "postgres")]
            Table::Pg($p) => match $txn.pg() {
                Some($x) => $pg,
                None => Err(heed::Error::Mdb(MdbError::Incompatible)),
            },
        }
    };
}

impl Table {
    /// The value under `key`.
    #[inline]
    pub(crate) fn get<'t>(&self, txn: &'t Txn<'_>, key: &[u8]) -> heed::Result<Option<&'t [u8]>> {
        dispatch!(self, txn, |db, t| db.get(t, key), |p, x| x.get(*p, key))
    }

    /// The greatest pair whose key is `<= key`.
    #[inline]
    pub(crate) fn get_lower_than_or_equal_to<'t>(
        &self,
        txn: &'t Txn<'_>,
        key: &[u8],
    ) -> heed::Result<Option<Pair<'t>>> {
        dispatch!(
            self,
            txn,
            |db, t| db.get_lower_than_or_equal_to(t, key),
            |p, x| x.seek(*p, key, super::postgres::Seek::AtOrBefore)
        )
    }

    /// The greatest pair whose key is `< key`.
    #[inline]
    pub(crate) fn get_lower_than<'t>(
        &self,
        txn: &'t Txn<'_>,
        key: &[u8],
    ) -> heed::Result<Option<Pair<'t>>> {
        dispatch!(self, txn, |db, t| db.get_lower_than(t, key), |p, x| x.seek(
            *p,
            key,
            super::postgres::Seek::Before
        ))
    }

    /// The smallest pair whose key is `> key`.
    #[inline]
    pub(crate) fn get_greater_than<'t>(
        &self,
        txn: &'t Txn<'_>,
        key: &[u8],
    ) -> heed::Result<Option<Pair<'t>>> {
        dispatch!(self, txn, |db, t| db.get_greater_than(t, key), |p, x| x
            .seek(*p, key, super::postgres::Seek::After))
    }

    /// The pair with the greatest key.
    #[inline]
    pub(crate) fn last<'t>(&self, txn: &'t Txn<'_>) -> heed::Result<Option<Pair<'t>>> {
        dispatch!(self, txn, |db, t| db.last(t), |p, x| x.last(*p))
    }

    /// Every pair, in key order.
    pub(crate) fn iter<'t>(
        &self,
        txn: &'t Txn<'_>,
    ) -> heed::Result<Iter<'t, heed::RoIter<'t, Bytes, Bytes>>> {
        dispatch!(self, txn, |db, t| db.iter(t).map(Iter::Lmdb), |p, x| x
            .range(*p, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
            .map(|rows| Iter::Pg(rows.into_iter())))
    }

    /// The pairs whose keys lie in `range`, in key order.
    pub(crate) fn range<'t, 'a>(
        &self,
        txn: &'t Txn<'_>,
        range: &'a (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>),
    ) -> heed::Result<Iter<'t, heed::RoRange<'t, Bytes, Bytes>>> {
        dispatch!(
            self,
            txn,
            |db, t| db.range(t, range).map(Iter::Lmdb),
            |p, x| x
                .range(*p, range.0, range.1)
                .map(|rows| Iter::Pg(rows.into_iter()))
        )
    }

    /// The pairs whose keys start with `prefix`, in key order.
    pub(crate) fn prefix_iter<'t>(
        &self,
        txn: &'t Txn<'_>,
        prefix: &[u8],
    ) -> heed::Result<Iter<'t, heed::RoPrefix<'t, Bytes, Bytes>>> {
        dispatch!(
            self,
            txn,
            |db, t| db.prefix_iter(t, prefix).map(Iter::Lmdb),
            |p, x| x.prefix(*p, prefix).map(|rows| Iter::Pg(rows.into_iter()))
        )
    }

    /// The pairs whose keys start with `prefix`, in reverse key order.
    pub(crate) fn rev_prefix_iter<'t>(
        &self,
        txn: &'t Txn<'_>,
        prefix: &[u8],
    ) -> heed::Result<Iter<'t, heed::RoRevPrefix<'t, Bytes, Bytes>>> {
        dispatch!(
            self,
            txn,
            |db, t| db.rev_prefix_iter(t, prefix).map(Iter::Lmdb),
            |p, x| x
                .prefix(*p, prefix)
                .map(|rows| Iter::Pg(rows.into_iter().rev().collect::<Vec<_>>().into_iter()))
        )
    }

    /// Writes `value` under `key`.
    #[inline]
    pub(crate) fn put(&self, txn: &mut Txn<'_>, key: &[u8], value: &[u8]) -> heed::Result<()> {
        match self {
            Table::Lmdb(db) => db.put(txn.lmdb_mut()?, key, value),
            #[cfg(feature = "postgres")]
            Table::Pg(p) => match txn {
                Txn::Pg(x) => x.put(*p, key, value, super::postgres::Put::Overwrite),
                _ => Err(not_writable()),
            },
        }
    }

    /// Writes `value` under `key`, which must be greater than every key
    /// (LMDB's `MDB_APPEND`: `KeyExist` otherwise).
    #[inline]
    pub(crate) fn append(&self, txn: &mut Txn<'_>, key: &[u8], value: &[u8]) -> heed::Result<()> {
        match self {
            Table::Lmdb(db) => db.put_with_flags(txn.lmdb_mut()?, PutFlags::APPEND, key, value),
            #[cfg(feature = "postgres")]
            Table::Pg(p) => match txn {
                Txn::Pg(x) => x.put(*p, key, value, super::postgres::Put::Append),
                _ => Err(not_writable()),
            },
        }
    }

    /// Writes `value` under `key` with LMDB's `flags`: `APPEND` (the key
    /// is greater than every key) or `NO_OVERWRITE` (`KeyExist` if the key
    /// is there) are the ones the engine uses.
    #[inline]
    pub(crate) fn put_with_flags(
        &self,
        txn: &mut Txn<'_>,
        flags: PutFlags,
        key: &[u8],
        value: &[u8],
    ) -> heed::Result<()> {
        match self {
            Table::Lmdb(db) => db.put_with_flags(txn.lmdb_mut()?, flags, key, value),
            #[cfg(feature = "postgres")]
            Table::Pg(p) => match txn {
                // Both flags refuse an existing key; `APPEND` also one not
                // greater than every key.
                Txn::Pg(x) => {
                    let how = if flags.contains(PutFlags::APPEND) {
                        super::postgres::Put::Append
                    } else {
                        super::postgres::Put::NoOverwrite
                    };
                    x.put(*p, key, value, how)
                }
                _ => Err(not_writable()),
            },
        }
    }

    /// Deletes `key`; whether it existed.
    #[inline]
    pub(crate) fn delete(&self, txn: &mut Txn<'_>, key: &[u8]) -> heed::Result<bool> {
        match self {
            Table::Lmdb(db) => db.delete(txn.lmdb_mut()?, key),
            #[cfg(feature = "postgres")]
            Table::Pg(p) => match txn {
                Txn::Pg(x) => x.delete(*p, key),
                _ => Err(not_writable()),
            },
        }
    }

    /// Deletes every key starting with `prefix`; how many there were.
    pub(crate) fn delete_prefix(&self, txn: &mut Txn<'_>, prefix: &[u8]) -> heed::Result<usize> {
        match self {
            Table::Lmdb(db) => {
                let mut iter = db.prefix_iter_mut(txn.lmdb_mut()?, prefix)?;
                let mut deleted = 0;
                while iter.next().transpose()?.is_some() {
                    // SAFETY: heed requires that no reference into the
                    // database from this iterator is alive while deleting;
                    // the entry just read is discarded.
                    unsafe { iter.del_current()? };
                    deleted += 1;
                }
                Ok(deleted)
            }
            #[cfg(feature = "postgres")]
            Table::Pg(p) => match txn {
                Txn::Pg(x) => x.delete_prefix(*p, prefix),
                _ => Err(not_writable()),
            },
        }
    }
}

/// The `meta` database inside one transaction, as an open's checks (format,
/// probe, store id, the chain's record) read and write it: LMDB's during its
/// database-creating transaction, or a [`Table`] in a [`Txn`].
pub(crate) trait MetaKv {
    /// The value under `key`.
    fn meta_get(&self, key: &[u8]) -> heed::Result<Option<&[u8]>>;
    /// Writes `value` under `key`.
    fn meta_put(&mut self, key: &[u8], value: &[u8]) -> heed::Result<()>;
}

impl MetaKv for (&mut RwTxn<'_>, &Database<'_, Bytes, Bytes>) {
    fn meta_get(&self, key: &[u8]) -> heed::Result<Option<&[u8]>> {
        self.1.get(self.0, key)
    }

    fn meta_put(&mut self, key: &[u8], value: &[u8]) -> heed::Result<()> {
        self.1.put(self.0, key, value)
    }
}

impl MetaKv for (&RoTxn<'_, WithoutTls>, &Database<'_, Bytes, Bytes>) {
    fn meta_get(&self, key: &[u8]) -> heed::Result<Option<&[u8]>> {
        self.1.get(self.0, key)
    }

    fn meta_put(&mut self, _: &[u8], _: &[u8]) -> heed::Result<()> {
        Err(not_writable())
    }
}

impl MetaKv for (&Txn<'_>, Table) {
    fn meta_get(&self, key: &[u8]) -> heed::Result<Option<&[u8]>> {
        self.1.get(self.0, key)
    }

    fn meta_put(&mut self, _: &[u8], _: &[u8]) -> heed::Result<()> {
        Err(not_writable())
    }
}

impl MetaKv for (&mut Txn<'_>, Table) {
    fn meta_get(&self, key: &[u8]) -> heed::Result<Option<&[u8]>> {
        self.1.get(self.0, key)
    }

    fn meta_put(&mut self, key: &[u8], value: &[u8]) -> heed::Result<()> {
        self.1.put(self.0, key, value)
    }
}

//! [`Varve`]'s key rotation, re-encryption pass and key status (the
//! facade over `storage::crypt` and `storage::rekey`; the types are in
//! `encryption`).

use crate::encryption::{EncryptionStatus, ReencryptOptions, ReencryptProgress, ReencryptReport};
use crate::store::Varve;

impl Varve {
    /// Adds a new random data key to an encrypted store and makes it the
    /// active one, in one write transaction: blocks and values written
    /// from the commit on are sealed with it, by every handle (in this and
    /// other processes: each write transaction reads which key is active).
    /// Older blocks keep their key and still open. Returns the new key id.
    ///
    /// Rotation alone re-seals nothing; [`Varve::reencrypt`](crate::Varve::reencrypt)
    /// then moves everything to the new key and retires the old ones.
    ///
    /// ```
    /// use varvedb::{EncryptionKey, StreamId, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = Varve::with_config(dir.path(), VarveConfig::encryption(EncryptionKey::from_bytes([1; 32])))?;
    /// varve.stream::<u64, 8>("ticks")?.append(StreamId(1), &1)?;
    /// let id = varve.rotate_data_key()?;
    /// assert_eq!(varve.encryption_status()?.unwrap().active_key, id);
    /// let report = varve.reencrypt()?;
    /// assert_eq!((report.blocks, report.retired.as_slice()), (1, &[1][..]));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotEncrypted`](crate::Error::NotEncrypted) for a plaintext
    /// store; [`Error::EncryptionKeyMismatch`](crate::Error::EncryptionKeyMismatch)
    /// if another process changed the master key since this handle opened
    /// the store (reopen it with the new key); [`Error::ReadOnly`](crate::Error::ReadOnly).
    pub fn rotate_data_key(&self) -> crate::Result<u32> {
        let store = self.store();
        store.check_writable("rotating the data key")?;
        store.write(|txn| txn.rotate_data_key())
    }

    /// Re-seals every block, stream name and `state` value sealed with a
    /// data key other than the active one under the active one, then
    /// retires the other data keys (deletes their wrapped copies). See
    /// [`Varve::reencrypt_with`].
    ///
    /// # Errors
    /// As [`Varve::reencrypt_with`].
    pub fn reencrypt(&self) -> crate::Result<ReencryptReport> {
        self.reencrypt_with(ReencryptOptions::default())
    }

    /// [`Varve::reencrypt`] with `options`.
    ///
    /// The pass runs in batches, each in its own short write transaction
    /// that also moves a cursor kept in the store, so appends and reads go
    /// on between them, and a pass interrupted (a crash, an error, the
    /// process killed) resumes where it stopped when run again; once
    /// complete, running it again does nothing. A rotation during a pass
    /// makes it start over for the new key. In a chained store each
    /// re-sealed block gets a re-seal record, so `verify` and
    /// [`Varve::verify_extends`](crate::Varve::verify_extends) with a head
    /// held from before still pass.
    ///
    /// A retired key stays in the memory of handles that had loaded it
    /// until they close (a snapshot from before the retirement may still
    /// read a block sealed with it); backups taken before it keep it too.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`](crate::Error::NotEncrypted) for a plaintext
    /// store; [`Error::Unauthentic`](crate::Error::Unauthentic) or
    /// [`Error::Corruption`](crate::Error::Corruption) for a damaged block
    /// or value (never re-sealed: the pass stops before it, the batches
    /// committed before stay); [`Error::ChainKeyRequired`](crate::Error::ChainKeyRequired)
    /// for a keyed chain whose key this handle was not given;
    /// [`Error::ReadOnly`](crate::Error::ReadOnly); [`Error::Storage`](crate::Error::Storage).
    pub fn reencrypt_with(&self, options: ReencryptOptions) -> crate::Result<ReencryptReport> {
        self.reencrypt_with_progress(options, |_| {})
    }

    /// [`Varve::reencrypt_with`], calling `progress` after each batch.
    ///
    /// # Errors
    /// As [`Varve::reencrypt_with`].
    pub fn reencrypt_with_progress(
        &self,
        options: ReencryptOptions,
        mut progress: impl FnMut(ReencryptProgress),
    ) -> crate::Result<ReencryptReport> {
        let started = std::time::Instant::now();
        let store = self.store();
        store.check_writable("re-encrypting")?;
        if store.keyring().is_none() {
            return Err(crate::Error::NotEncrypted {
                path: store.path().to_path_buf(),
            });
        }
        let budget = crate::storage::rekey::Budget {
            rewrites: options.batch_blocks_limit(),
            bytes: options.batch_bytes_limit(),
            examined: options.batch_blocks_limit().saturating_mul(16).max(1024),
        };
        let mut report = ReencryptReport::default();
        loop {
            let batch = store.write(|txn| txn.reencrypt_batch(budget))?;
            report.key_id = batch.target;
            report.batches += 1;
            report.blocks += batch.blocks;
            report.events += batch.events;
            report.bytes += batch.bytes;
            report.names += batch.names;
            report.values += batch.values;
            report.resealed += batch.resealed;
            report.retired.extend(batch.retired);
            progress(ReencryptProgress {
                position: batch.position.map(crate::GlobalSequence),
                end: crate::GlobalSequence(store.log_end()),
                blocks: report.blocks,
                bytes: report.bytes,
            });
            if batch.done {
                break;
            }
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// An encrypted store's keys as the store records them now (`None` for
    /// a plaintext store).
    ///
    /// # Errors
    /// [`Error::Corruption`](crate::Error::Corruption) for a damaged
    /// encryption record; [`Error::Storage`](crate::Error::Storage).
    pub fn encryption_status(&self) -> crate::Result<Option<EncryptionStatus>> {
        self.store().snapshot()?.encryption_status()
    }
}

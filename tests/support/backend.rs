//! The backends the conformance suite runs against: one check, written once
//! over a [`Backend`], runs on LMDB (a temporary directory, `Varve::new`) and,
//! with the `postgres` feature, on PostgreSQL (a fresh database,
//! `Varve::connect`).
//!
//! ```
//! use varvedb_suite::Backend;
//! for backend in Backend::all() {
//!     let Some(store) = backend.fresh("doc_example") else { continue }; // skipped
//!     assert_eq!(store.varve().global_reader().end().unwrap().0, 0);
//! }
//! ```

use std::path::PathBuf;

use varvedb::{Varve, VarveConfig};

/// A storage backend of `Varve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store: a temporary directory opened with `Varve::new`.
    Lmdb,
    /// A fresh database on the tests' PostgreSQL server (see
    /// [`crate::pg`]), opened with `Varve::connect`.
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Backend {
    /// Every backend this build has.
    pub fn all() -> Vec<Backend> {
        vec![
            Backend::Lmdb,
            #[cfg(feature = "postgres")]
            Backend::Postgres,
        ]
    }

    /// The backend's name, as the conformance tests' modules spell it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Lmdb => "lmdb",
            #[cfg(feature = "postgres")]
            Backend::Postgres => "postgres",
        }
    }

    /// A fresh, empty store with the default configuration, or `None` if
    /// this backend has no server here (the test is skipped; see
    /// [`crate::pg::fresh_database`]).
    pub fn fresh(self, test: &str) -> Option<TestStore> {
        self.fresh_with(test, VarveConfig::default())
    }

    /// [`Backend::fresh`] with `config`.
    pub fn fresh_with(self, test: &str, config: VarveConfig) -> Option<TestStore> {
        let (place, guard) = match self {
            Backend::Lmdb => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                (Place::Dir(dir.path().to_path_buf()), Guard::Dir(dir))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let db = crate::pg::fresh_database(test)?;
                (Place::Url(db.url().to_string()), Guard::Database(db))
            }
        };
        let varve = place
            .open_with(config.clone())
            .unwrap_or_else(|e| panic!("{test}: open a fresh {} store: {e}", self.name()));
        Some(TestStore {
            varve: Some(varve),
            config,
            place,
            _guard: guard,
        })
    }
}

/// Where a store lives: enough to open it again, here or in a child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// An LMDB store's directory.
    Dir(PathBuf),
    /// A PostgreSQL database's URL.
    #[cfg(feature = "postgres")]
    Url(String),
}

impl Place {
    /// Opens the store with the default configuration.
    pub fn open(&self) -> varvedb::Result<Varve> {
        self.open_with(VarveConfig::default())
    }

    /// Opens the store with `config`.
    pub fn open_with(&self, config: VarveConfig) -> varvedb::Result<Varve> {
        match self {
            Place::Dir(dir) => Varve::with_config(dir, config),
            #[cfg(feature = "postgres")]
            Place::Url(url) => Varve::connect_with(url, config),
        }
    }

    /// The place as one string, for a child process's environment.
    pub fn to_arg(&self) -> String {
        match self {
            Place::Dir(dir) => format!("lmdb:{}", dir.display()),
            #[cfg(feature = "postgres")]
            Place::Url(url) => format!("postgres:{url}"),
        }
    }

    /// The place [`Place::to_arg`] wrote.
    ///
    /// # Panics
    /// On a string it did not write (or one of a backend this build lacks).
    pub fn from_arg(arg: &str) -> Place {
        match arg.split_once(':') {
            Some(("lmdb", dir)) => Place::Dir(PathBuf::from(dir)),
            #[cfg(feature = "postgres")]
            Some(("postgres", url)) => Place::Url(url.to_string()),
            _ => panic!("not a store place of this build: {arg:?}"),
        }
    }
}

#[derive(Debug)]
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Database(#[allow(dead_code)] crate::pg::TestDatabase),
}

/// A fresh store of one backend, open, deleted when dropped (after the
/// handle closes).
#[derive(Debug)]
pub struct TestStore {
    varve: Option<Varve>,
    config: VarveConfig,
    place: Place,
    _guard: Guard,
}

impl TestStore {
    /// The open store.
    pub fn varve(&self) -> &Varve {
        self.varve.as_ref().expect("the store is open")
    }

    /// Where it lives (to open it again, or from a child process).
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Another handle on the same store, opened anew with the store's
    /// configuration (on LMDB, within one process, the same shared store).
    pub fn reopen(&self) -> Varve {
        self.place
            .open_with(self.config.clone())
            .expect("reopen the store")
    }

    /// Closes this guard's handle (a test about reopening after a crash can
    /// then open the store afresh); [`TestStore::varve`] panics afterwards.
    pub fn close(&mut self) {
        self.varve = None;
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        // The handle before the directory or database it uses.
        self.varve = None;
    }
}

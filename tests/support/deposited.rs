//! A versioned event (`Deposited` v1 with `u32` cents, v2 with `u64`, upcast
//! from v1) for the tests of migrations, fixtures and the chain's re-seals.

/// The first version.
pub mod v1 {
    /// Version 1 of the event.
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Deposited", stream = "accounts")]
    pub struct Deposited {
        /// The amount.
        pub cents: u32,
    }
}

/// The second version, upcast from the first.
pub mod v2 {
    /// Version 2 of the event.
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Deposited", stream = "accounts", version = 2, upcast_from = super::v1::Deposited)]
    pub struct Deposited {
        /// The amount.
        pub cents: u64,
    }

    impl varvedb::Upcast<super::v1::Deposited> for Deposited {
        fn upcast(old: &super::v1::ArchivedDeposited) -> Self {
            Deposited {
                cents: u64::from(old.cents.to_native()),
            }
        }
    }
}

//! An event's identity is its name and its chain of versions: moving or
//! renaming the type keeps it, and bytes of any older version are upcast, step
//! by step, to exactly the values the conversions say.

use rkyv::{Archive, Serialize};
use varvedb::{lineage, Event, NoPrevious, Upcast};

mod v1 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
    }
}

mod v2 {
    /// Adds a currency, EUR for everything written before.
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 2, upcast_from = super::v1::OrderPlaced)]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
        pub currency: [u8; 3],
    }

    impl varvedb::Upcast<super::v1::OrderPlaced> for OrderPlaced {
        fn upcast(old: &super::v1::ArchivedOrderPlaced) -> Self {
            OrderPlaced {
                order: old.order.to_native(),
                cents: old.cents.to_native(),
                currency: *b"EUR",
            }
        }
    }
}

/// Splits the amount into units and cents.
#[derive(Archive, Serialize, Event, Debug, PartialEq)]
#[event(name = "OrderPlaced", stream = "orders", version = 3, upcast_from = v2::OrderPlaced)]
struct OrderPlaced {
    order: u64,
    units: u64,
    cents: u8,
    currency: String,
}

impl Upcast<v2::OrderPlaced> for OrderPlaced {
    fn upcast(old: &v2::ArchivedOrderPlaced) -> Self {
        let total = old.cents.to_native();
        OrderPlaced {
            order: old.order.to_native(),
            units: total / 100,
            cents: (total % 100) as u8,
            currency: String::from_utf8_lossy(&old.currency).into_owned(),
        }
    }
}

mod moved {
    pub mod deeper {
        /// `base::Shipped` moved to another module and renamed, keeping its name.
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        #[event(name = "Shipped")]
        pub struct ParcelShipped {
            pub parcel: u64,
        }
    }
}

mod base {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Shipped {
        pub parcel: u64,
    }
}

#[test]
fn the_event_name_defaults_to_the_type_name_and_every_version_shares_it() {
    assert_eq!(base::Shipped::NAME, "Shipped");
    assert_eq!(v1::OrderPlaced::NAME, "OrderPlaced");
    assert_eq!(v2::OrderPlaced::NAME, "OrderPlaced");
    assert_eq!(OrderPlaced::NAME, "OrderPlaced");
}

#[test]
fn moving_or_renaming_a_type_that_keeps_its_name_keeps_its_fingerprint() {
    assert_eq!(
        moved::deeper::ParcelShipped::FINGERPRINT,
        base::Shipped::FINGERPRINT
    );
    assert_ne!(
        moved::deeper::ParcelShipped::TYPE_NAME,
        base::Shipped::TYPE_NAME
    );
}

#[test]
fn every_version_has_its_own_fingerprint() {
    let versions = lineage::<OrderPlaced>();
    assert_eq!(
        versions,
        vec![
            (1, v1::OrderPlaced::FINGERPRINT),
            (2, v2::OrderPlaced::FINGERPRINT),
            (3, OrderPlaced::FINGERPRINT),
        ]
    );
    let mut fingerprints: Vec<u64> = versions.iter().map(|v| v.1).collect();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), 3);
    assert_eq!(
        lineage::<base::Shipped>(),
        vec![(1, base::Shipped::FINGERPRINT)]
    );
}

#[test]
fn a_first_version_has_no_previous() {
    fn previous_is_none<E: Event<Previous = NoPrevious>>() {}
    previous_is_none::<v1::OrderPlaced>();
    previous_is_none::<base::Shipped>();
}

fn archived<T: varvedb::Archivable>(value: &T) -> rkyv::util::AlignedVec<16> {
    rkyv::to_bytes::<rkyv::rancor::Error>(value).unwrap()
}

#[test]
fn bytes_of_every_older_version_upcast_to_the_values_the_conversions_give() {
    let first = archived(&v1::OrderPlaced {
        order: 7,
        cents: 1234,
    });
    let upcast = varvedb::__private::upcast::<OrderPlaced>(v1::OrderPlaced::FINGERPRINT, &first)
        .unwrap()
        .expect("version 1 is in the chain");
    assert_eq!(
        upcast,
        OrderPlaced {
            order: 7,
            units: 12,
            cents: 34,
            currency: "EUR".into()
        }
    );

    let second = archived(&v2::OrderPlaced {
        order: 8,
        cents: 99,
        currency: *b"USD",
    });
    let upcast = varvedb::__private::upcast::<OrderPlaced>(v2::OrderPlaced::FINGERPRINT, &second)
        .unwrap()
        .expect("version 2 is in the chain");
    assert_eq!(
        upcast,
        OrderPlaced {
            order: 8,
            units: 0,
            cents: 99,
            currency: "USD".into()
        }
    );
}

#[test]
fn unaligned_bytes_of_an_older_version_still_upcast() {
    let first = archived(&v1::OrderPlaced {
        order: 1,
        cents: 250,
    });
    let mut shifted = vec![0u8; first.len() + 1];
    shifted[1..].copy_from_slice(&first);
    let upcast =
        varvedb::__private::upcast::<OrderPlaced>(v1::OrderPlaced::FINGERPRINT, &shifted[1..])
            .unwrap()
            .unwrap();
    assert_eq!((upcast.units, upcast.cents), (2, 50));
}

#[test]
fn a_fingerprint_outside_the_chain_is_not_upcast() {
    let bytes = archived(&base::Shipped { parcel: 1 });
    assert!(
        varvedb::__private::upcast::<OrderPlaced>(base::Shipped::FINGERPRINT, &bytes)
            .unwrap()
            .is_none()
    );
    // The current version is never upcast: it is read in place.
    assert!(
        varvedb::__private::upcast::<OrderPlaced>(OrderPlaced::FINGERPRINT, &bytes)
            .unwrap()
            .is_none()
    );
}

#[test]
fn damaged_bytes_of_an_older_version_are_an_error_naming_the_version() {
    let mut garbage = rkyv::util::AlignedVec::<16>::new();
    garbage.extend_from_slice(&[0xff; 3]);
    let err = varvedb::__private::upcast::<OrderPlaced>(v1::OrderPlaced::FINGERPRINT, &garbage)
        .unwrap_err();
    assert_eq!(err.version, 1);
    assert!(err.to_string().starts_with("version 1: "), "{err}");
}

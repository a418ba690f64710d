use rkyv::{Archive, Serialize};
use varvedb::{Event, Upcast};

mod old {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Opened", stream = "accounts")]
    pub struct Opened {
        pub at: u64,
    }
}

#[derive(Archive, Serialize, Event)]
#[event(name = "Opened", stream = "accounts", version = 2, upcast_from = old::Opened)]
struct OpenedV2 {
    at: u64,
    by: u32,
}

impl Upcast<old::Opened> for OpenedV2 {
    fn upcast(old: &old::ArchivedOpened) -> Self {
        OpenedV2 { at: old.at.to_native(), by: 0 }
    }
}

#[derive(Archive, Serialize, Event)]
#[event(name = "Opened", stream = "accounts", version = 5, upcast_from = OpenedV2)]
enum Opened {
    ByClerk { at: u64, clerk: u32 },
    Online { at: u64 },
}

impl Upcast<OpenedV2> for Opened {
    fn upcast(old: &ArchivedOpenedV2) -> Self {
        match old.by.to_native() {
            0 => Opened::Online { at: old.at.to_native() },
            clerk => Opened::ByClerk { at: old.at.to_native(), clerk },
        }
    }
}

fn main() {
    assert_eq!(varvedb::lineage::<Opened>().len(), 3);
    assert_eq!(Opened::NAME, "Opened");
}

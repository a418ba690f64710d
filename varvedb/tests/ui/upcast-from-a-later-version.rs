use rkyv::{Archive, Serialize};
use varvedb::{Event, Upcast};

#[derive(Archive, Serialize, Event)]
#[event(name = "Opened", version = 3)]
struct OpenedV3 {
    at: u64,
}

#[derive(Archive, Serialize, Event)]
#[event(version = 2, upcast_from = OpenedV3)]
struct Opened {
    at: u64,
    by: u32,
}

impl Upcast<OpenedV3> for Opened {
    fn upcast(old: &ArchivedOpenedV3) -> Self {
        Opened { at: old.at.to_native(), by: 0 }
    }
}

fn main() {}

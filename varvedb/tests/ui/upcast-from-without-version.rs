use rkyv::{Archive, Serialize};
use varvedb::{Event, Upcast};

#[derive(Archive, Serialize, Event)]
#[event(name = "Opened")]
struct OpenedV1 {
    at: u64,
}

#[derive(Archive, Serialize, Event)]
#[event(upcast_from = OpenedV1)]
struct Opened {
    at: u64,
    by: u32,
}

impl Upcast<OpenedV1> for Opened {
    fn upcast(old: &ArchivedOpenedV1) -> Self {
        Opened { at: old.at.to_native(), by: 0 }
    }
}

fn main() {}

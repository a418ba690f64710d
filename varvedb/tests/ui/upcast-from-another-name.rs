use rkyv::{Archive, Serialize};
use varvedb::{Event, Upcast};

#[derive(Archive, Serialize, Event)]
#[event(stream = "accounts")]
struct Created {
    at: u64,
}

#[derive(Archive, Serialize, Event)]
#[event(stream = "accounts", version = 2, upcast_from = Created)]
struct Opened {
    at: u64,
    by: u32,
}

impl Upcast<Created> for Opened {
    fn upcast(old: &ArchivedCreated) -> Self {
        Opened { at: old.at.to_native(), by: 0 }
    }
}

fn main() {}

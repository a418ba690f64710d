use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(name = "Opened")]
struct OpenedV1 {
    at: u64,
}

#[derive(Archive, Serialize, Event)]
#[event(version = 2, upcast_from = OpenedV1)]
struct Opened {
    at: u64,
    by: u32,
}

fn main() {}

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(version = 2, upcast_from)]
struct Opened {
    at: u64,
}

fn main() {}

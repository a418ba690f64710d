use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(version = 4294967296)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

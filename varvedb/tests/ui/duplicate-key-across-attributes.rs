use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(version = 2)]
#[event(version = 3)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

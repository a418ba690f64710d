use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(buffer = 67_108_865)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(buffer = 0)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

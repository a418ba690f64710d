use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

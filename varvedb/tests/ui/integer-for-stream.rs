use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = 42)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

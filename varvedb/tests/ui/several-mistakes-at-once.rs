use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = "", buffer = 0, colour = "red")]
#[event(version = 0)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(buffer = 4 * 1024)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

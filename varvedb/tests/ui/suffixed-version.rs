use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(version = 2u8)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = "orders" version = 2)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

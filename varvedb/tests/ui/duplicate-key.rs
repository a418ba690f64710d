use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = "orders", buffer = 64, stream = "sales")]
struct OrderPlaced {
    order: u64,
}

fn main() {}

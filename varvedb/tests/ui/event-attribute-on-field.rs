use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
struct OrderPlaced {
    #[event(stream = "orders")]
    order: u64,
}

fn main() {}

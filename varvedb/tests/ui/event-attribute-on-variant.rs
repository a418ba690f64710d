use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
enum Order {
    #[event(version = 2)]
    Placed {
        order: u64,
    },
    Cancelled,
}

fn main() {}

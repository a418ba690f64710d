use rkyv::Archive;
use varvedb::Event;

#[derive(Archive, Event)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

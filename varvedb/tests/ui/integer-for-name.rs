use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(name = 7)]
struct Opened {
    at: u64,
}

fn main() {}

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(name = "Account Opened")]
struct Opened {
    at: u64,
}

fn main() {}

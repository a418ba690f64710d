use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
struct CommandePassée {
    order: u64,
}

fn main() {}

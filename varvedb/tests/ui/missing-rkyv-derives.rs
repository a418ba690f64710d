use varvedb::Event;

#[derive(Event)]
struct OrderPlaced {
    order: u64,
}

fn main() {}

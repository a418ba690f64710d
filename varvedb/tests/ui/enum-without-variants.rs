use varvedb::Event;

#[derive(Event)]
enum Never {}

fn main() {}

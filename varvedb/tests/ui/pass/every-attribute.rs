use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = "shop/orders.eu-west_2", buffer = 65_536, version = 7)]
struct AllInOne {
    order: u64,
}

#[derive(Archive, Serialize, Event)]
#[event(stream = r"split")]
#[event(buffer = 1usize)]
#[event(version = 4294967295u32)]
struct Split {
    order: u64,
}

#[derive(Archive, Serialize, Event)]
#[event(buffer = 67108864)]
#[event()]
struct Largest;

fn main() {
    assert_eq!(AllInOne::STREAM, "shop/orders.eu-west_2");
    assert_eq!(AllInOne::BUFFER_SIZE, 65_536);
    assert_eq!(AllInOne::VERSION, 7);
    assert_eq!(
        (Split::STREAM, Split::BUFFER_SIZE, Split::VERSION),
        ("split", 1, u32::MAX)
    );
    assert_eq!(
        (Largest::STREAM, Largest::BUFFER_SIZE),
        ("largest", 64 * 1024 * 1024)
    );
}

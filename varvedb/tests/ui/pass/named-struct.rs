use rkyv::{Archive, Deserialize, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Deserialize, Event)]
struct OrderPlaced {
    order: u64,
    lines: Vec<String>,
}

#[derive(Archive, Serialize, Event)]
struct r#Match {
    r#type: u8,
}

fn main() {
    assert_eq!(OrderPlaced::STREAM, "order_placed");
    assert_eq!(OrderPlaced::BUFFER_SIZE, 1024);
    assert_eq!(OrderPlaced::VERSION, 1);
    assert!(OrderPlaced::TYPE_NAME.ends_with("::OrderPlaced"));
    assert_ne!(OrderPlaced::FINGERPRINT, 0);
    assert_eq!(r#Match::STREAM, "match");
    assert!(r#Match::TYPE_NAME.ends_with("::Match"));
}

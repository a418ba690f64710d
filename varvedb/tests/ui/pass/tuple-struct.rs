use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = "prices")]
struct PriceChanged(u32, i64);

fn main() {
    assert_eq!(PriceChanged::STREAM, "prices");
    assert_ne!(PriceChanged::FINGERPRINT, 0);
}

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
struct HTTPServerStarted;

fn main() {
    assert_eq!(HTTPServerStarted::STREAM, "http_server_started");
    assert_ne!(HTTPServerStarted::FINGERPRINT, 0);
}

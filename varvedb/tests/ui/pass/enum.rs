use rkyv::{Archive, Deserialize, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Deserialize, Event)]
#[event(stream = "accounts", version = 4)]
enum Account {
    Opened { owner: String },
    Deposited(u64),
    Closed,
}

fn main() {
    assert_eq!(Account::STREAM, "accounts");
    assert_eq!(Account::VERSION, 4);
    let _ = (
        Account::Opened {
            owner: String::new(),
        },
        Account::Deposited(1),
        Account::Closed,
    );
}

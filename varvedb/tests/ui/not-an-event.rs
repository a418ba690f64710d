use rkyv::{Archive, Serialize};

#[derive(Archive, Serialize)]
struct OrderPlaced {
    order: u64,
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let varve = varvedb::Varve::new(dir.path()).unwrap();
    let _ = varve.events::<OrderPlaced>();
}

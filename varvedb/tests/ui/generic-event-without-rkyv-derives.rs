use varvedb::Event;

#[derive(Event)]
struct Measured<T> {
    value: T,
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let varve = varvedb::Varve::new(dir.path()).unwrap();
    let _ = varve.events::<Measured<u64>>();
}

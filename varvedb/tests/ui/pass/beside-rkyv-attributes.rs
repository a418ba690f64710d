use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Event, StreamId, StreamSequence, Varve};

/// Documented, with rkyv's own attributes and other derives around.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize, Event)]
#[rkyv(derive(Debug))]
#[event(stream = "notes")]
struct NoteTaken {
    /// The note.
    text: String,
    #[rkyv(with = rkyv::with::Skip)]
    #[allow(dead_code)]
    cached_len: usize,
}

fn main() -> Result<(), varvedb::Error> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let varve = Varve::new(dir.path())?;
    let mut notes = varve.events::<NoteTaken>()?;
    notes.append(
        StreamId(1),
        &NoteTaken {
            text: "hello".into(),
            cached_len: 5,
        },
    )?;
    let read = notes
        .reader()
        .get_archived(StreamId(1), StreamSequence(0))?
        .expect("just written");
    assert_eq!(read.text, "hello");
    Ok(())
}

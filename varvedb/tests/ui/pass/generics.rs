use std::marker::PhantomData;

use rkyv::{Archive, Serialize};
use varvedb::Event;

#[derive(Archive, Serialize, Event)]
#[event(stream = "readings")]
struct Reading<T, const N: usize>
where
    T: Copy,
{
    values: [T; N],
}

#[derive(Archive, Serialize, Event)]
enum Tagged<'a, M> {
    Marked(u64, PhantomData<&'a M>),
    Unmarked,
}

fn stream_of<E: Event>() -> &'static str {
    E::STREAM
}

fn main() {
    assert_eq!(stream_of::<Reading<f32, 3>>(), "readings");
    assert_eq!(
        Reading::<u8, 1>::FINGERPRINT,
        Reading::<u16, 2>::FINGERPRINT
    );
    assert_eq!(stream_of::<Tagged<'static, String>>(), "tagged");
    let _ = (
        Reading { values: [1u8] },
        Tagged::<'static, ()>::Marked(1, PhantomData),
        Tagged::<()>::Unmarked,
    );
}

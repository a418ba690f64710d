//! `#[derive(Event)]` compiles every supported shape, and turns every mistake
//! into a short compile error at the token that caused it.

#[test]
fn derive_event_accepts_every_shape_and_rejects_each_mistake_clearly() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/*.rs");
}

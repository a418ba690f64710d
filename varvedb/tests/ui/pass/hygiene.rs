//! The expansion names everything through `::varvedb`, so local items with
//! the names it uses change nothing.
#![allow(non_camel_case_types, dead_code)]

mod shadowing {
    pub struct usize;
    pub struct u32;
    pub struct u64;
    pub struct str;
    pub trait Event {}
    pub trait Archivable {}
    pub mod varvedb {}
    pub mod __private {}
    macro_rules! concat {
        () => {};
    }
    macro_rules! module_path {
        () => {};
    }

    #[derive(rkyv::Archive, rkyv::Serialize, ::varvedb::Event)]
    #[event(stream = "shadowed", buffer = 16, version = 2)]
    pub struct Shadowed {
        pub count: ::core::primitive::u64,
    }
}

fn main() {
    use varvedb::Event;
    assert_eq!(shadowing::Shadowed::STREAM, "shadowed");
    assert!(shadowing::Shadowed::TYPE_NAME.ends_with("::shadowing::Shadowed"));
}

//! `#[derive(Event)]` for [VarveDB](https://docs.rs/varvedb).
//!
//! Use it through the re-export `varvedb::Event`, which also documents every
//! attribute; this crate has no other public item.
//!
//! The implementation reads the input (`ast`), its `#[event(...)]` keys
//! (`attr`), checks them (`valid`) and writes the impl (`expand`). Every mistake
//! is reported at the token that caused it, all of them at once, and the macro
//! never panics.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `varvedb::Event` for a struct or an enum that also derives rkyv's
/// `Archive` and `Serialize`. The keys of `#[event(...)]`, all optional:
///
/// | key | value | default |
/// |---|---|---|
/// | `stream` | ASCII letters, digits, `_`, `-`, `.`, `/`; 1 to 255 bytes | the type's name in snake_case |
/// | `buffer` | bytes, 1 to 67108864 (64 MiB) | 1024 |
/// | `version` | 1 to 4294967295 | 1 |
/// | `name` | the event's stable name: ASCII letters, digits, `_`, `-`, `.`, `/`; 1 to 255 bytes | the type's name |
/// | `upcast_from` | the previous version's type | none |
///
/// The `varvedb::Event` trait documents each key, the fingerprint and the
/// compile-time checks.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}

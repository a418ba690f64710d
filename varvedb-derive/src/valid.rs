//! Checks the `#[event(...)]` values and settles the defaults.

use syn::ext::IdentExt;

use crate::ast::{Errors, Input};

/// The buffer size when `buffer` is not given, in bytes.
pub(crate) const DEFAULT_BUFFER: u64 = 1024;
/// The largest `buffer`, in bytes (64 MiB).
pub(crate) const MAX_BUFFER: u64 = 64 * 1024 * 1024;
/// The longest stream name, in bytes.
pub(crate) const MAX_STREAM_NAME_LEN: usize = 255;
/// The version when `version` is not given.
pub(crate) const DEFAULT_VERSION: u32 = 1;

const ALLOWED: &str = "ASCII letters, digits, `_`, `-`, `.` and `/`";

/// The values the impl is written with. After an error they hold a default in
/// place of the rejected value, so the impl can still be emitted.
pub(crate) struct Settings {
    pub(crate) stream: String,
    pub(crate) buffer: u64,
    pub(crate) version: u32,
    /// The event's stable name: `name = "..."`, or the type's name.
    pub(crate) name: String,
}

pub(crate) fn check(input: &Input, errors: &mut Errors) -> Settings {
    let stream = match &input.attrs.stream {
        Some(lit) => {
            let name = lit.value();
            if let Some(problem) = stream_name_problem(&name) {
                errors.push(syn::Error::new(
                    lit.span(),
                    format!("invalid stream name: {problem}"),
                ));
            }
            name
        }
        None => {
            // From the event's name, so every version of an event (`OpenedV1`,
            // `Opened`, both `name = "Opened"`) lands in one stream.
            let base = match &input.attrs.name {
                Some(lit) => lit.value(),
                None => input.ident.unraw().to_string(),
            };
            let name = snake_case(&base);
            let name_rejected = input
                .attrs
                .name
                .as_ref()
                .is_some_and(|lit| event_name_problem(&lit.value()).is_some());
            // A rejected `name` is reported on its own; the stream made from it
            // would only repeat the complaint.
            if let Some(problem) = stream_name_problem(&name).filter(|_| !name_rejected) {
                errors.push(syn::Error::new(
                    input.ident.span(),
                    format!(
                        "the default stream name `{name}` (the {}'s name in snake_case) is invalid: \
                         {problem}; choose one with `#[event(stream = \"...\")]`",
                        if input.attrs.name.is_some() { "event" } else { "type" }
                    ),
                ));
            }
            name
        }
    };

    let buffer = match &input.attrs.buffer {
        None => DEFAULT_BUFFER,
        Some(int) => match int.value {
            Some(0) => {
                errors.push(syn::Error::new(
                    int.span(),
                    "`buffer` must be at least 1 byte",
                ));
                DEFAULT_BUFFER
            }
            Some(n) if n <= MAX_BUFFER => n,
            _ => {
                errors.push(syn::Error::new(
                    int.span(),
                    format!(
                        "`buffer` must be at most {MAX_BUFFER} bytes (64 MiB); \
                         larger events still fit, the buffer grows on the heap"
                    ),
                ));
                DEFAULT_BUFFER
            }
        },
    };

    let version = match &input.attrs.version {
        None => DEFAULT_VERSION,
        Some(int) => match int.value.map(u32::try_from) {
            Some(Ok(0)) => {
                errors.push(syn::Error::new(int.span(), "`version` starts at 1"));
                DEFAULT_VERSION
            }
            Some(Ok(n)) => n,
            _ => {
                errors.push(syn::Error::new(
                    int.span(),
                    format!("`version` must fit in a `u32` (at most {})", u32::MAX),
                ));
                DEFAULT_VERSION
            }
        },
    };

    let name = match &input.attrs.name {
        Some(lit) => {
            let name = lit.value();
            if let Some(problem) = event_name_problem(&name) {
                errors.push(syn::Error::new(
                    lit.span(),
                    format!("invalid event name: {problem}"),
                ));
            }
            name
        }
        None => input.ident.unraw().to_string(),
    };

    if let (Some(ty), None) = (&input.attrs.upcast_from, &input.attrs.version) {
        errors.push(syn::Error::new_spanned(
            ty,
            "`upcast_from` needs an explicit `version` greater than the previous version's, \
             e.g. `#[event(version = 2, upcast_from = OrderPlacedV1)]`",
        ));
    }

    Settings {
        stream,
        buffer,
        version,
        name,
    }
}

/// Why `name` cannot be an event name, if it cannot. Event names follow the
/// stream names' portable rules, so the default stream made from one is valid.
fn event_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("an event name must not be empty".into());
    }
    if name.len() > MAX_STREAM_NAME_LEN {
        return Some(format!(
            "an event name is at most {MAX_STREAM_NAME_LEN} bytes, this one is {}",
            name.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    name.chars()
        .find(|c| !allowed(*c))
        .map(|c| format!("{c:?} is not allowed in an event name, which may hold only {ALLOWED}"))
}

/// Why `name` cannot be a stream name, if it cannot.
fn stream_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a stream name must not be empty".into());
    }
    if name.len() > MAX_STREAM_NAME_LEN {
        return Some(format!(
            "a stream name is at most {MAX_STREAM_NAME_LEN} bytes, this one is {}",
            name.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    name.chars()
        .find(|c| !allowed(*c))
        .map(|c| format!("{c:?} is not allowed in a stream name, which may hold only {ALLOWED}"))
}

/// `OrderPlaced` -> `order_placed`, `HTTPRequest` -> `http_request`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let boundary = match i.checked_sub(1).map(|j| chars[j]) {
                Some(prev) if prev.is_lowercase() || prev.is_ascii_digit() => true,
                Some(prev) if prev.is_uppercase() => {
                    chars.get(i + 1).is_some_and(|n| n.is_lowercase())
                }
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("OrderPlaced"), "order_placed");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("V2Event"), "v2_event");
        assert_eq!(snake_case("Order_Placed"), "order_placed");
        assert_eq!(snake_case("Opened"), "opened");
        assert_eq!(snake_case("IOError"), "io_error");
        assert_eq!(snake_case("ABC"), "abc");
    }

    #[test]
    fn event_names_are_checked() {
        assert!(event_name_problem("OrderPlaced").is_none());
        assert!(event_name_problem("shop/orders/OrderPlaced.v2").is_none());
        assert!(event_name_problem("shop::OrderPlaced").is_some());
        assert!(event_name_problem("").is_some());
        assert!(event_name_problem("Order Placed").is_some());
        assert!(event_name_problem(&"x".repeat(256)).is_some());
    }

    #[test]
    fn stream_names_are_checked() {
        assert!(stream_name_problem("orders/eu-west.v2_x").is_none());
        assert!(stream_name_problem("").is_some());
        assert!(stream_name_problem("a b").is_some());
        assert!(stream_name_problem("été").is_some());
        assert!(stream_name_problem(&"x".repeat(255)).is_none());
        assert!(stream_name_problem(&"x".repeat(256)).is_some());
    }
}

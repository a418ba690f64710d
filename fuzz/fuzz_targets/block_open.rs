//! Opening an encrypted block never panics, never accepts a block that was
//! changed after sealing, and gives back exactly the block that was sealed.
//!
//! The first input byte picks a mode:
//! - bit 0 clear: the rest is an encrypted block's bytes, as read from disk
//!   (almost always refused: the fuzzer cannot forge a tag);
//! - bit 0 set: the rest describes payloads, archived into a valid block and
//!   sealed as an encrypted store does; trailing bytes are edits
//!   (`offset: u16, xor: u8`) applied to the sealed bytes;
//! - bit 1: open under a key other than the one it was sealed for.
//!
//! A sealed block, unedited and under its own key, opens to the very block
//! that was sealed; an edited one, or one under another key, never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use varvedb::__fuzz::{claimed_key, encode_block, open_block, seal_block};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let key = claimed_key(rest).unwrap_or(0);
        let key = if mode & 2 != 0 { key ^ 1 } else { key };
        if let Ok(plain) = open_block(key, rest) {
            // Only a block sealed with the fixed key could open: the
            // fuzzer would have forged Poly1305.
            panic!("forged bytes opened to a {}-byte block", plain.len());
        }
        return;
    }
    let (count, rest) = rest.split_first().unwrap_or((&0, &[]));
    let count = usize::from(count % 6) + 1;
    let mut payloads = Vec::new();
    let mut input = rest;
    for _ in 0..count {
        let (len, tail) = input.split_first().unwrap_or((&0, &[]));
        let len = usize::from(*len % 64).min(tail.len());
        payloads.push(tail[..len].to_vec());
        input = &tail[len..];
    }
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let plain = encode_block(&refs, 3, 1, 40);
    let key = claimed_key(&plain).unwrap_or(0);
    let original = seal_block(key, &plain);
    let mut sealed = original.clone();
    while input.len() >= 3 {
        let at = usize::from(u16::from_le_bytes([input[0], input[1]]));
        let xor = input[2];
        input = &input[3..];
        if at < sealed.len() {
            sealed[at] ^= xor;
        }
    }
    let edited = sealed != original;
    let open_key = if mode & 2 != 0 { key ^ 1 } else { key };
    match open_block(open_key, &sealed) {
        Ok(opened) => {
            assert!(!edited && open_key == key, "a changed or moved block opened");
            assert_eq!(opened.as_slice(), plain.as_slice(), "opens to what was sealed");
        }
        Err(e) => assert!(edited || open_key != key, "a sealed block was refused: {e}"),
    }
});

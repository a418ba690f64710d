//! Record decoding never panics, never reads outside the record, and never
//! hands out a payload that differs from what was written.
//!
//! The first input byte picks a mode:
//! - bit 0 clear: the rest is a block's bytes, as read from disk;
//! - bit 0 set: the rest describes events, which are archived and encoded into
//!   a valid block as the writer does; trailing bytes are edits
//!   (`offset: u16, xor: u8`) applied to the encoded block;
//! - bit 1: recompute every checksum after the edits, so that damage reaches
//!   the bounds checks behind them;
//! - bit 2: decode under a key other than the one the header claims.
//!
//! Each payload that decodes is then validated as an archived `Sample`
//! (rkyv with bytecheck) and, if valid, read field by field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::__fuzz::{claimed_key, decode_block, encode_block, fix_checksums};

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct Sample {
    id: u64,
    note: String,
    tags: Vec<u32>,
    maybe: Option<u64>,
    kind: Kind,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
enum Kind {
    Plain,
    Tagged(u16),
    Named(String),
}

/// Reads the input front to back; yields zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes(8).try_into().unwrap_or_default())
    }

    fn sample(&mut self) -> Sample {
        let id = self.u64();
        let len = usize::from(self.byte() % 64);
        let note = String::from_utf8_lossy(&self.bytes(len)).into_owned();
        let tags = (0..self.byte() % 8)
            .map(|_| u32::from(self.byte()) << 8)
            .collect();
        let maybe = (self.byte() % 2 == 1).then(|| self.u64());
        let kind = match self.byte() % 3 {
            0 => Kind::Plain,
            1 => Kind::Tagged(u16::from(self.byte())),
            _ => {
                let len = usize::from(self.byte() % 16);
                Kind::Named(String::from_utf8_lossy(&self.bytes(len)).into_owned())
            }
        };
        Sample {
            id,
            note,
            tags,
            maybe,
            kind,
        }
    }
}

/// Reads every field of a validated archive, as an application would.
fn touch(sample: &ArchivedSample) -> usize {
    let mut n = sample.id.to_native() as usize;
    n = n.wrapping_add(sample.note.len());
    n = n.wrapping_add(
        sample
            .tags
            .iter()
            .map(|t| t.to_native() as usize)
            .sum::<usize>(),
    );
    n = n.wrapping_add(sample.maybe.as_ref().map_or(0, |m| m.to_native() as usize));
    n.wrapping_add(match &sample.kind {
        ArchivedKind::Plain => 0,
        ArchivedKind::Tagged(t) => usize::from(t.to_native()),
        ArchivedKind::Named(s) => s.len(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut block = AlignedVec::<16>::new();
    let mut written: Option<Vec<Sample>> = None;
    if mode & 1 == 0 {
        block.extend_from_slice(rest);
    } else {
        let mut input = Input(rest);
        let samples: Vec<Sample> = (0..1 + input.byte() % 6).map(|_| input.sample()).collect();
        let archived: Vec<AlignedVec> = samples
            .iter()
            .map(|s| rkyv::to_bytes::<rancor::Error>(s).unwrap())
            .collect();
        let payloads: Vec<&[u8]> = archived.iter().map(|a| a.as_slice()).collect();
        block = encode_block(&payloads, input.u64(), input.u64() >> 8, input.u64() >> 8);
        let mut edited = false;
        while !input.0.is_empty() {
            let at = usize::from(u16::from_le_bytes([input.byte(), input.byte()]));
            let xor = input.byte();
            if at < block.len() && xor != 0 {
                block[at] ^= xor;
                edited = true;
            }
        }
        if !edited {
            written = Some(samples);
        }
    }
    if mode & 2 != 0 {
        fix_checksums(&mut block);
    }
    let claimed = claimed_key(&block).unwrap_or(0);
    let key = if mode & 4 != 0 { claimed ^ 1 } else { claimed };

    let decoded = decode_block(key, &block);
    if let Some(samples) = &written {
        // An untouched block decodes to exactly what was written, and only
        // under its own key.
        match &decoded {
            Ok(d) => assert_eq!(d.events.len(), samples.len()),
            Err(e) => assert!(mode & 4 != 0, "a valid block was refused: {e}"),
        }
    }
    let Ok(decoded) = decoded else {
        return;
    };
    assert_eq!(
        decoded.first_global, key,
        "a block decodes only under its own key"
    );
    let range = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
    for (i, payload) in decoded.events.iter().enumerate() {
        let Ok(payload) = payload else { continue };
        let start = payload.as_ptr() as usize;
        assert!(range.contains(&start) || payload.is_empty());
        assert!(
            start + payload.len() <= range.end,
            "payload {i} outside the block"
        );
        assert_eq!((start - range.start) % 16, 0, "payload {i} misaligned");
        match rkyv::access::<ArchivedSample, rancor::Error>(payload) {
            Ok(archived) => {
                std::hint::black_box(touch(archived));
                if let Some(samples) = &written {
                    let back: Sample = rkyv::deserialize::<_, rancor::Error>(archived).unwrap();
                    assert_eq!(back, samples[i], "event {i} round-trips");
                }
            }
            Err(_) => assert!(written.is_none(), "a written event {i} failed validation"),
        }
    }
});

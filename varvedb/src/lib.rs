#![doc = include_str!("../../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]

mod config;
mod error;
mod event;
mod global;
mod position;
mod reader;
mod storage;
mod store;
mod stream;
mod verify;

pub use config::{Durability, VarveConfig};
pub use error::{Error, Location, Result};
pub use event::{Archivable, Event};
pub use global::{GlobalEvent, GlobalIter, GlobalReader};
pub use position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
pub use reader::{EventBytes, EventRef, StreamIter, StreamReader};
pub use store::Varve;
pub use stream::Stream;
pub use verify::{Problem, VerifyReport};

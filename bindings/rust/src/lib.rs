//! Rust bindings to libnexusquant, the KV-cache compression library.
//!
//! [`sys`] holds the raw declarations of `nexusquant.h`; the rest is a safe layer:
//! [`Context`], [`Block`] and [`Sequence`] own their handles and free them on drop,
//! every fallible call returns [`Result`] with the library's status and message, and
//! keys and values go in and out as slices whose lengths are checked against their
//! shapes and layouts before any pointer reaches the library.
//!
//! ```no_run
//! use nexusquant::{Config, Context, KvInput, Preset};
//! let (heads, tokens, dim) = (8u32, 512u32, 128u32);
//! let k = vec![0f32; (heads * tokens * dim) as usize];
//! let v = k.clone();
//! let ctx = Context::new(&Config::new(dim, heads).preset(Preset::Balanced))?;
//! let block = ctx.compress(&KvInput::f32(&k, &v, tokens))?;
//! let archive = ctx.serialize(&block)?;
//! let back = ctx.deserialize(&archive)?;
//! let (k2, v2) = ctx.decode_f32(&back)?;
//! println!("{:.1}x, {} of {} tokens kept", block.info().ratio, block.tokens_kept(), tokens);
//! # Ok::<(), nexusquant::Error>(())
//! ```
//!
//! Threads follow the header: a [`Context`] and [`Block`]s are `Send + Sync`; a
//! [`Sequence`] appends through `&mut self` and decodes through `&self`.
pub mod sys;

mod block;
mod config;
mod context;
mod error;
mod kv;
mod sequence;

pub use block::{Block, BlockInfo, BlockRef};
pub use config::{Codec, Config, EvictMode, LayerOverride, Preset, Rope, RopeMode, RopePairing, RopeScaling};
pub use context::{Context, LayerParams};
pub use error::{Error, Result, Status};
pub use kv::{Elements, ElementsMut, KvInput, KvOutput, Layout, Scores};
pub use sequence::{Sequence, SequenceTotals};

/// The run-time library's version, `MAJOR*10000 + MINOR*100 + PATCH`.
pub fn version_number() -> u32 {
    // SAFETY: no arguments, no state.
    unsafe { sys::nq_version_number() }
}

/// The run-time library's version, "MAJOR.MINOR.PATCH".
pub fn version() -> &'static str {
    // SAFETY: static storage.
    unsafe { core::ffi::CStr::from_ptr(sys::nq_version_string()) }.to_str().unwrap_or("?")
}

/// 2 (K and V) x layers x kv_heads x head_dim x tokens x bytes_per_element.
pub fn kv_cache_bytes(layers: u64, kv_heads: u64, head_dim: u64, tokens: u64, bytes_per_element: u64) -> u64 {
    // SAFETY: plain arithmetic.
    unsafe { sys::nq_kv_cache_bytes(layers, kv_heads, head_dim, tokens, bytes_per_element) }
}

//! Contexts: the configuration every compress and decode call uses.
use core::ffi::{c_void, CStr};
use core::ops::Range;
use core::ptr::NonNull;

use crate::block::{Block, BlockRef};
use crate::config::Config;
use crate::error::{check, Error, Result};
use crate::kv::{KvInput, KvOutput, Scores};
use crate::sequence::Sequence;
use crate::sys;

/// Bits and eviction a context uses for one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerParams {
    pub k_bits: u32,
    pub v_bits: u32,
    pub evict_fraction: f32,
    pub sink_tokens: u32,
    pub recent_window: u32,
    pub fp16_sinks: u32,
    pub fp16_window: u32,
}

/// A context: read-only after creation, so one context may be used from many threads
/// at once (`Send + Sync`, as the header's "Threads" section allows).
pub struct Context {
    ptr: NonNull<sys::nq_context>,
    head_dim: u32,
    num_kv_heads: u32,
    num_q_heads: u32,
}

// SAFETY: the header: "A context may be used from several threads at once for compress,
// decode, serialise and deserialise: it is read-only after creation."
unsafe impl Send for Context {}
unsafe impl Sync for Context {}

impl Context {
    /// Validates the configuration and creates a context.
    pub fn new(cfg: &Config) -> Result<Context> {
        let raw = cfg.to_raw();
        let mut p: *mut sys::nq_context = core::ptr::null_mut();
        // SAFETY: raw (and the overrides it points to, copied by the library) are valid
        // for the call.
        check(unsafe { sys::nq_context_create(&raw, &mut p) })?;
        let ptr = NonNull::new(p).ok_or_else(|| Error::new(crate::Status::Internal, "nq_context_create returned NULL"))?;
        let mut ctx = Context { ptr, head_dim: 0, num_kv_heads: 0, num_q_heads: 0 };
        let resolved = ctx.config()?;
        ctx.head_dim = resolved.head_dim;
        ctx.num_kv_heads = resolved.num_kv_heads;
        ctx.num_q_heads = resolved.num_q_heads;
        Ok(ctx)
    }

    /// The `nq_context *` (for calls through [`crate::sys`]).
    pub fn as_ptr(&self) -> *mut sys::nq_context {
        self.ptr.as_ptr()
    }

    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }
    pub fn num_kv_heads(&self) -> u32 {
        self.num_kv_heads
    }
    pub fn num_q_heads(&self) -> u32 {
        self.num_q_heads
    }

    /// The resolved configuration (presets expanded for layer 0).
    pub fn config(&self) -> Result<sys::nq_config> {
        // SAFETY: plain data; size set; valid context.
        let mut c: sys::nq_config = unsafe { core::mem::zeroed() };
        c.size = core::mem::size_of::<sys::nq_config>();
        check(unsafe { sys::nq_context_get_config(self.as_ptr(), &mut c) })?;
        Ok(c)
    }

    /// Bits and eviction for one layer after presets and overrides.
    pub fn layer_params(&self, layer: u32) -> Result<LayerParams> {
        // SAFETY: as above.
        let mut p: sys::nq_layer_params = unsafe { core::mem::zeroed() };
        p.size = core::mem::size_of::<sys::nq_layer_params>();
        check(unsafe { sys::nq_context_layer_params(self.as_ptr(), layer, &mut p) })?;
        Ok(LayerParams {
            k_bits: p.k_bits,
            v_bits: p.v_bits,
            evict_fraction: p.evict_fraction,
            sink_tokens: p.sink_tokens,
            recent_window: p.recent_window,
            fp16_sinks: p.fp16_sinks,
            fp16_window: p.fp16_window,
        })
    }

    /// The CPU instruction set in use: "scalar", "avx2" or "avx512".
    pub fn cpu_isa(&self) -> &'static str {
        // SAFETY: the library returns one of a few static strings.
        unsafe { CStr::from_ptr(sys::nq_context_cpu_isa(self.as_ptr())) }.to_str().unwrap_or("unknown")
    }

    /// Exact resident bytes compressing `kv` will produce.
    pub fn compress_bound(&self, kv: &KvInput<'_>) -> Result<usize> {
        let raw = kv.raw_desc(self.num_kv_heads, self.head_dim)?;
        let mut n = 0usize;
        // SAFETY: raw's pointers borrow kv's slices, checked against the shape.
        check(unsafe { sys::nq_compress_bound(self.as_ptr(), &raw, &mut n) })?;
        Ok(n)
    }

    /// Resident bytes of `layers` blocks of `tokens` tokens under this context's settings.
    pub fn estimate_bytes(&self, layers: u32, tokens: u64) -> Result<u64> {
        let mut n = 0u64;
        // SAFETY: valid context and out pointer.
        check(unsafe { sys::nq_estimate_bytes(self.as_ptr(), layers, tokens, &mut n) })?;
        Ok(n)
    }

    /// Compresses one chunk (key-norm scores if the layer evicts).
    pub fn compress(&self, kv: &KvInput<'_>) -> Result<Block> {
        self.compress_with_scores(kv, &Scores::KeyNorm)
    }

    /// Compresses one chunk with the given importance scores.
    pub fn compress_with_scores(&self, kv: &KvInput<'_>, scores: &Scores<'_>) -> Result<Block> {
        let raw = kv.raw_desc(self.num_kv_heads, self.head_dim)?;
        let sc = scores.raw_desc(self.num_kv_heads, self.num_q_heads, self.head_dim, kv.num_tokens())?;
        let mut out: *mut sys::nq_block = core::ptr::null_mut();
        // SAFETY: every pointer in raw and sc borrows a slice checked against its shape;
        // the library reads them only during the call.
        check(unsafe { sys::nq_compress_kv(self.as_ptr(), &raw, &sc, core::ptr::null_mut(), &mut out) })?;
        // SAFETY: a new handle that nobody else owns.
        unsafe { Block::from_raw(out) }.ok_or_else(|| Error::new(crate::Status::Internal, "nq_compress_kv returned NULL"))
    }

    /// Decodes kept tokens `tokens` of a block into `out` (token i of the range at token
    /// index i of the output layouts).
    pub fn decode(&self, block: &BlockRef, tokens: Range<u32>, out: &mut KvOutput<'_>) -> Result<()> {
        let n = tokens
            .end
            .checked_sub(tokens.start)
            .ok_or_else(|| Error::new(crate::Status::OutOfRange, "token range ends before it starts"))?;
        let raw = out.raw_desc(self.num_kv_heads, self.head_dim, n)?;
        // SAFETY: the output slices are borrowed mutably and hold every element the
        // layouts address for n tokens of this context's shape (the library refuses a
        // block whose shape differs from the context's).
        check(unsafe {
            sys::nq_decode_block(self.as_ptr(), block.as_ptr(), tokens.start, tokens.end, &raw, core::ptr::null_mut())
        })
    }

    /// Decodes every kept token as f32 `[heads][tokens_kept][head_dim]` K and V.
    pub fn decode_f32(&self, block: &BlockRef) -> Result<(Vec<f32>, Vec<f32>)> {
        let kept = block.tokens_kept();
        let n = self.num_kv_heads as usize * kept as usize * self.head_dim as usize;
        let (mut k, mut v) = (vec![0f32; n], vec![0f32; n]);
        self.decode(block, 0..kept, &mut KvOutput::f32(&mut k, &mut v))?;
        Ok((k, v))
    }

    /// The archive form of a block (checksummed, positions delta-coded, zstd).
    pub fn serialize(&self, block: &BlockRef) -> Result<Vec<u8>> {
        let mut bound = 0usize;
        // SAFETY: valid block; out pointers valid; dst holds `bound` bytes.
        check(unsafe { sys::nq_block_serialize_bound(block.as_ptr(), &mut bound) })?;
        let mut buf = vec![0u8; bound];
        let mut written = 0usize;
        check(unsafe {
            sys::nq_block_serialize(self.as_ptr(), block.as_ptr(), buf.as_mut_ptr().cast::<c_void>(), bound, &mut written)
        })?;
        buf.truncate(written);
        Ok(buf)
    }

    /// Reads an archive into a new block. Truncated, tampered or foreign bytes fail
    /// with `Truncated`, `Corrupt` or `Version`.
    pub fn deserialize(&self, bytes: &[u8]) -> Result<Block> {
        let mut out: *mut sys::nq_block = core::ptr::null_mut();
        // SAFETY: the library reads at most bytes.len() bytes during the call.
        check(unsafe {
            sys::nq_block_deserialize(self.as_ptr(), bytes.as_ptr().cast::<c_void>(), bytes.len(), &mut out)
        })?;
        // SAFETY: a new handle that nobody else owns.
        unsafe { Block::from_raw(out) }
            .ok_or_else(|| Error::new(crate::Status::Internal, "nq_block_deserialize returned NULL"))
    }

    /// A new, empty sequence of one layer. It borrows the context, which must outlive it.
    pub fn sequence(&self, layer: u32) -> Result<Sequence<'_>> {
        Sequence::new(self, layer)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: self owns the handle; sequences borrow the context, so none is left.
        unsafe { sys::nq_context_free(self.ptr.as_ptr()) }
    }
}

impl core::fmt::Debug for Context {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context")
            .field("head_dim", &self.head_dim)
            .field("num_kv_heads", &self.num_kv_heads)
            .field("num_q_heads", &self.num_q_heads)
            .finish()
    }
}

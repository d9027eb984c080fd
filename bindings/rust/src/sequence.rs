//! Sequences: a growing (layer, sequence) of blocks.
use core::ops::Range;
use core::ptr::NonNull;

use crate::block::{Block, BlockRef};
use crate::context::Context;
use crate::error::{check, Error, Result};
use crate::kv::{KvInput, KvOutput, Scores};
use crate::sys;

/// Totals over every block of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceTotals {
    /// Kept tokens per head.
    pub tokens: u64,
    pub resident_bytes: u64,
    pub original_bytes: u64,
}

/// A prefill compressed once, then later chunks appended as new blocks. The sequence
/// keeps a pointer to its context, so it borrows it.
///
/// Appending takes `&mut self` and decoding `&self`, so the header's rule (no appends
/// from two threads at once, decodes from many threads while nobody appends) is what
/// the borrow checker already enforces: the type is `Send + Sync`.
pub struct Sequence<'ctx> {
    ptr: NonNull<sys::nq_sequence>,
    ctx: &'ctx Context,
}

// SAFETY: see the type's documentation; the context it points to is Sync.
unsafe impl Send for Sequence<'_> {}
unsafe impl Sync for Sequence<'_> {}

impl<'ctx> Sequence<'ctx> {
    pub(crate) fn new(ctx: &'ctx Context, layer: u32) -> Result<Sequence<'ctx>> {
        let mut p: *mut sys::nq_sequence = core::ptr::null_mut();
        // SAFETY: valid context and out pointer.
        check(unsafe { sys::nq_sequence_create(ctx.as_ptr(), layer, &mut p) })?;
        let ptr = NonNull::new(p).ok_or_else(|| Error::new(crate::Status::Internal, "nq_sequence_create returned NULL"))?;
        Ok(Sequence { ptr, ctx })
    }

    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// Compresses `kv` (its layer is ignored: the sequence's is used) and appends it.
    /// Positions must continue after the last appended one.
    pub fn append(&mut self, kv: &KvInput<'_>) -> Result<()> {
        self.append_with_scores(kv, &Scores::KeyNorm)
    }

    pub fn append_with_scores(&mut self, kv: &KvInput<'_>, scores: &Scores<'_>) -> Result<()> {
        let c = self.ctx;
        let raw = kv.raw_desc(c.num_kv_heads(), c.head_dim())?;
        let sc = scores.raw_desc(c.num_kv_heads(), c.num_q_heads(), c.head_dim(), kv.num_tokens())?;
        // SAFETY: pointers borrow checked slices, read during the call only; &mut self
        // means nobody else appends or decodes meanwhile.
        check(unsafe { sys::nq_sequence_append(self.ptr.as_ptr(), &raw, &sc, core::ptr::null_mut()) })
    }

    /// Appends an existing block; the sequence takes it over. On failure the block is
    /// dropped (freed).
    pub fn append_block(&mut self, block: Block) -> Result<()> {
        let p = block.into_raw();
        // SAFETY: p is a valid handle we own.
        let st = unsafe { sys::nq_sequence_append_block(self.ptr.as_ptr(), p) };
        if st != sys::NQ_OK {
            let err = Error::last(st);
            // SAFETY: on failure the handle is still ours.
            drop(unsafe { Block::from_raw(p) });
            return Err(err);
        }
        Ok(())
    }

    pub fn num_blocks(&self) -> usize {
        // SAFETY: valid handle.
        unsafe { sys::nq_sequence_num_blocks(self.ptr.as_ptr()) }
    }

    /// Block `index`, borrowed from the sequence.
    pub fn block(&self, index: usize) -> Option<&BlockRef> {
        // SAFETY: the block lives until the sequence is freed, which &self prevents.
        let p = unsafe { sys::nq_sequence_block(self.ptr.as_ptr(), index) };
        (!p.is_null()).then(|| unsafe { BlockRef::from_ptr(p) })
    }

    pub fn blocks(&self) -> impl Iterator<Item = &BlockRef> + '_ {
        (0..self.num_blocks()).filter_map(move |i| self.block(i))
    }

    pub fn totals(&self) -> SequenceTotals {
        let (mut tokens, mut resident_bytes, mut original_bytes) = (0u64, 0u64, 0u64);
        // SAFETY: valid handle and out pointers.
        let st =
            unsafe { sys::nq_sequence_totals(self.ptr.as_ptr(), &mut tokens, &mut resident_bytes, &mut original_bytes) };
        debug_assert_eq!(st, sys::NQ_OK);
        SequenceTotals { tokens, resident_bytes, original_bytes }
    }

    /// Decodes tokens `tokens` of the whole sequence (they may span blocks).
    pub fn decode(&self, tokens: Range<u32>, out: &mut KvOutput<'_>) -> Result<()> {
        let n = tokens
            .end
            .checked_sub(tokens.start)
            .ok_or_else(|| Error::new(crate::Status::OutOfRange, "token range ends before it starts"))?;
        let raw = out.raw_desc(self.ctx.num_kv_heads(), self.ctx.head_dim(), n)?;
        // SAFETY: output slices checked against the shape; decoding only reads the
        // sequence (the C function takes a non-const pointer), and &self excludes appends.
        check(unsafe {
            sys::nq_sequence_decode(self.ptr.as_ptr(), tokens.start, tokens.end, &raw, core::ptr::null_mut())
        })
    }

    /// Every token as f32 `[heads][tokens][head_dim]` K and V.
    pub fn decode_f32(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let t = u32::try_from(self.totals().tokens).map_err(|_| Error::invalid("sequence too long for one decode"))?;
        let n = self.ctx.num_kv_heads() as usize * t as usize * self.ctx.head_dim() as usize;
        let (mut k, mut v) = (vec![0f32; n], vec![0f32; n]);
        self.decode(0..t, &mut KvOutput::f32(&mut k, &mut v))?;
        Ok((k, v))
    }

    /// Original positions of tokens `range` of one head.
    pub fn positions(&self, head: u32, range: Range<u32>) -> Result<Vec<i64>> {
        let n = range.end.checked_sub(range.start).ok_or_else(|| Error::new(crate::Status::OutOfRange, "empty range"))?;
        let mut out = vec![0i64; n as usize];
        // SAFETY: out holds n entries; the library checks the range.
        check(unsafe { sys::nq_sequence_positions(self.ptr.as_ptr(), head, range.start, range.end, out.as_mut_ptr()) })?;
        Ok(out)
    }
}

impl Drop for Sequence<'_> {
    fn drop(&mut self) {
        // SAFETY: self owns the handle (and the blocks in it).
        unsafe { sys::nq_sequence_free(self.ptr.as_ptr()) }
    }
}

impl core::fmt::Debug for Sequence<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sequence").field("blocks", &self.num_blocks()).field("totals", &self.totals()).finish()
    }
}

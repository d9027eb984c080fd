//! Blocks: compressed (layer, sequence, chunk)s, owned (`Block`) or borrowed (`&BlockRef`).
use core::ffi::c_void;
use core::marker::{PhantomData, PhantomPinned};
use core::ops::{Deref, Range};
use core::ptr::NonNull;

use crate::config::{Codec, EvictMode, RopeMode};
use crate::error::{check, Error, Result};
use crate::sys;

/// A block the library owns elsewhere (in a sequence) or that a [`Block`] owns. Only
/// ever seen behind a reference: `&BlockRef` is an `nq_block *` that lives as long as
/// the reference.
///
/// Blocks are immutable once created, so a `&BlockRef` may be read from many threads.
#[repr(C)]
pub struct BlockRef {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

// SAFETY: the header's "Threads": blocks are immutable after creation and may be read and
// decoded from several threads at once.
unsafe impl Send for BlockRef {}
unsafe impl Sync for BlockRef {}

/// What `nq_block_get_info` reports about a block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockInfo {
    pub layer: u32,
    pub num_heads: u32,
    pub head_dim: u32,
    /// Tokens given to compress.
    pub tokens_in: u32,
    /// Tokens per head stored.
    pub tokens_kept: u32,
    pub k_bits: u32,
    pub v_bits: u32,
    pub codec: Option<Codec>,
    pub evict_mode: Option<EvictMode>,
    pub rope_mode: Option<RopeMode>,
    pub fp16_sinks: u32,
    pub fp16_window: u32,
    /// Each head kept its own tokens.
    pub positions_per_head: bool,
    /// In host memory (the only kind this crate makes).
    pub host: bool,
    pub first_position: i64,
    pub last_position: i64,
    /// fp16 bytes of the K and V given.
    pub original_bytes: u64,
    /// Every byte of the block.
    pub resident_bytes: u64,
    /// original_bytes / resident_bytes.
    pub ratio: f64,
    pub header_bytes: u64,
    pub position_bytes: u64,
    pub scale_bytes: u64,
    pub code_bytes: u64,
    pub fp16_bytes: u64,
    pub padding_bytes: u64,
    /// The key mean (docs/FORMAT.md 1.8): heads * head_dim * 2 with key centering, else 0.
    pub key_mean_bytes: u64,
}

impl BlockRef {
    /// # Safety
    /// `p` must be a valid block that outlives `'a` and is not freed meanwhile.
    pub(crate) unsafe fn from_ptr<'a>(p: *const sys::nq_block) -> &'a BlockRef {
        &*(p as *const BlockRef)
    }

    /// The `nq_block *` (for calls through [`crate::sys`]).
    pub fn as_ptr(&self) -> *const sys::nq_block {
        self as *const BlockRef as *const sys::nq_block
    }

    pub fn info(&self) -> BlockInfo {
        // SAFETY: plain data; size set as the header asks; self is a valid block.
        let mut i: sys::nq_block_info = unsafe { core::mem::zeroed() };
        i.size = core::mem::size_of::<sys::nq_block_info>();
        let st = unsafe { sys::nq_block_get_info(self.as_ptr(), &mut i) };
        debug_assert_eq!(st, sys::NQ_OK, "nq_block_get_info failed on a valid block");
        BlockInfo {
            layer: i.layer,
            num_heads: i.num_heads,
            head_dim: i.head_dim,
            tokens_in: i.tokens_in,
            tokens_kept: i.tokens_kept,
            k_bits: i.k_bits,
            v_bits: i.v_bits,
            codec: Codec::from_raw(i.codec),
            evict_mode: EvictMode::from_raw(i.evict_mode),
            rope_mode: RopeMode::from_raw(i.rope_mode),
            fp16_sinks: i.fp16_sinks,
            fp16_window: i.fp16_window,
            positions_per_head: i.positions_per_head != 0,
            host: i.memory == sys::NQ_MEMORY_HOST,
            first_position: i.first_position,
            last_position: i.last_position,
            original_bytes: i.original_bytes,
            resident_bytes: i.resident_bytes,
            ratio: i.ratio,
            header_bytes: i.header_bytes,
            position_bytes: i.position_bytes,
            scale_bytes: i.scale_bytes,
            code_bytes: i.code_bytes,
            fp16_bytes: i.fp16_bytes,
            padding_bytes: i.padding_bytes,
            key_mean_bytes: i.key_mean_bytes,
        }
    }

    /// Tokens per head stored.
    pub fn tokens_kept(&self) -> u32 {
        self.info().tokens_kept
    }

    /// Original positions of kept tokens `range` of one head (any head when positions
    /// are shared).
    pub fn positions(&self, head: u32, range: Range<u32>) -> Result<Vec<i64>> {
        let n = range.end.checked_sub(range.start).ok_or_else(|| Error::new(crate::Status::OutOfRange, "empty range"))?;
        let mut out = vec![0i64; n as usize];
        // SAFETY: out holds n entries; the library checks head and range.
        check(unsafe { sys::nq_block_positions(self.as_ptr(), head, range.start, range.end, out.as_mut_ptr()) })?;
        Ok(out)
    }

    /// The resident bytes of the block.
    pub fn data(&self) -> &[u8] {
        let mut p: *const c_void = core::ptr::null();
        let mut n = 0usize;
        // SAFETY: valid block, out pointers valid. Blocks this crate makes are in host
        // memory, and the bytes live (unchanged) as long as the block.
        let st = unsafe { sys::nq_block_data(self.as_ptr(), &mut p, &mut n) };
        if st != sys::NQ_OK || p.is_null() || !self.info().host {
            return &[];
        }
        unsafe { core::slice::from_raw_parts(p.cast::<u8>(), n) }
    }

    /// XXH3-64 of the resident bytes: equal digests mean identical blocks.
    pub fn digest(&self) -> Result<u64> {
        let mut d = 0u64;
        // SAFETY: valid block and out pointer.
        check(unsafe { sys::nq_block_digest(self.as_ptr(), &mut d) })?;
        Ok(d)
    }
}

/// An owned block; freed when dropped. Dereferences to [`BlockRef`] for reading.
pub struct Block {
    ptr: NonNull<sys::nq_block>,
}

// SAFETY: see BlockRef; the handle may be freed from any thread.
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

impl Block {
    /// Takes ownership of a block handle.
    ///
    /// # Safety
    /// `p` must be a block handle nobody else frees.
    pub unsafe fn from_raw(p: *mut sys::nq_block) -> Option<Block> {
        NonNull::new(p).map(|ptr| Block { ptr })
    }

    /// Gives up ownership: the caller frees the handle (or hands it to the library).
    pub fn into_raw(self) -> *mut sys::nq_block {
        let p = self.ptr.as_ptr();
        core::mem::forget(self);
        p
    }
}

impl Deref for Block {
    type Target = BlockRef;
    fn deref(&self) -> &BlockRef {
        // SAFETY: the handle is valid while self lives.
        unsafe { BlockRef::from_ptr(self.ptr.as_ptr()) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: self owns the handle.
        unsafe { sys::nq_block_free(self.ptr.as_ptr()) }
    }
}

impl core::fmt::Debug for Block {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Block").field("info", &self.info()).finish()
    }
}

impl core::fmt::Debug for BlockRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlockRef").field("info", &self.info()).finish()
    }
}

//! Keys and values in and out: slices with their shapes and layouts, checked against
//! the slices' lengths before any pointer reaches the library.
use core::ffi::c_void;

use crate::error::{Error, Result};
use crate::sys;

/// Elements of K or V to compress. f16 and bf16 are given as their bit patterns.
#[derive(Clone, Copy, Debug)]
pub enum Elements<'a> {
    F16(&'a [u16]),
    Bf16(&'a [u16]),
    F32(&'a [f32]),
}

/// Where decoded K or V go.
#[derive(Debug)]
pub enum ElementsMut<'a> {
    F16(&'a mut [u16]),
    Bf16(&'a mut [u16]),
    F32(&'a mut [f32]),
}

impl Elements<'_> {
    fn raw(&self) -> (sys::nq_dtype, *const c_void, usize) {
        match *self {
            Elements::F16(s) => (sys::NQ_DTYPE_F16, s.as_ptr().cast(), s.len()),
            Elements::Bf16(s) => (sys::NQ_DTYPE_BF16, s.as_ptr().cast(), s.len()),
            Elements::F32(s) => (sys::NQ_DTYPE_F32, s.as_ptr().cast(), s.len()),
        }
    }
}

impl ElementsMut<'_> {
    fn raw(&mut self) -> (sys::nq_dtype, *mut c_void, usize) {
        match self {
            ElementsMut::F16(s) => (sys::NQ_DTYPE_F16, s.as_mut_ptr().cast(), s.len()),
            ElementsMut::Bf16(s) => (sys::NQ_DTYPE_BF16, s.as_mut_ptr().cast(), s.len()),
            ElementsMut::F32(s) => (sys::NQ_DTYPE_F32, s.as_mut_ptr().cast(), s.len()),
        }
    }
}

/// Where element (head h, token t, dim d) lives in a slice. Strides are in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout<'a> {
    /// `[heads][tokens][head_dim]`, contiguous.
    HeadsTokensDim,
    /// `[tokens][heads][head_dim]`, contiguous (one layer of most engines' caches).
    TokensHeadsDim,
    /// `offset + h*head + t*token + d*dim`.
    Strided { offset: usize, head: usize, token: usize, dim: usize },
    /// Pages of `page_size` tokens: token t is in page `page_table[t / page_size]` at
    /// `page_index*page + (t % page_size)*token + h*head + d*dim`. The number of pages
    /// the slice holds is computed from its length and passed to the library, which
    /// rejects table entries past it.
    Paged { page_size: u32, page_table: &'a [i32], page: usize, token: usize, head: usize, dim: usize },
}

/// The raw layout of `l` for `heads` x `tokens` x `head_dim` elements in a slice of
/// `len`, and the element offset of (0, 0, 0); an error unless every element the layout
/// can address lies inside the slice.
fn to_raw_layout(
    l: &Layout<'_>,
    heads: u32,
    tokens: u32,
    head_dim: u32,
    len: usize,
    what: &str,
) -> Result<(usize, sys::nq_layout)> {
    let (h, t, d) = (heads as usize, tokens as usize, head_dim as usize);
    let overflow = || Error::invalid(format!("{what}: the layout's extent overflows"));
    let too_short = |need: usize| Error::invalid(format!("{what}: the layout addresses {need} elements, the slice has {len}"));
    let to_i64 = |x: usize| i64::try_from(x).map_err(|_| Error::invalid(format!("{what}: stride too large")));
    // One past the largest offset of sum(i_k * stride_k), 0 <= i_k < extent_k (0 if empty).
    let extent = |axes: &[(usize, usize)]| -> Result<usize> {
        if axes.iter().any(|&(_, n)| n == 0) {
            return Ok(0);
        }
        let mut last = 0usize;
        for &(stride, n) in axes {
            last = stride.checked_mul(n - 1).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
        }
        last.checked_add(1).ok_or_else(overflow)
    };
    // SAFETY: nq_layout is plain data; all-zero is a valid value.
    let mut raw: sys::nq_layout = unsafe { core::mem::zeroed() };
    let dim_stride = match *l {
        Layout::HeadsTokensDim | Layout::TokensHeadsDim => 1,
        Layout::Strided { dim, .. } | Layout::Paged { dim, .. } => dim,
    };
    // The library reads a dim stride of 0 as 1: refuse it rather than check the wrong extent.
    if dim_stride == 0 {
        return Err(Error::invalid(format!("{what}: the dim stride is 0")));
    }
    match *l {
        Layout::Paged { page_size, page_table, page, token, head, dim } => {
            if page_size == 0 {
                return Err(Error::invalid(format!("{what}: page_size is 0")));
            }
            let pages_used = t.div_ceil(page_size as usize);
            if page_table.len() < pages_used {
                return Err(Error::invalid(format!(
                    "{what}: {tokens} tokens need {pages_used} page table entries, the table has {}",
                    page_table.len()
                )));
            }
            // Elements one page spans from its start, then how many whole pages the slice holds.
            let span = extent(&[(head, h), (token, page_size as usize), (dim, d)])?;
            let num_pages = if t == 0 || span == 0 {
                0
            } else if span > len {
                return Err(too_short(span));
            } else {
                (len - span).checked_div(page).map_or(1, |n| n + 1)
            };
            raw.kind = sys::NQ_LAYOUT_PAGED;
            raw.page_size = page_size;
            raw.stride_page = to_i64(page)?;
            raw.stride_token = to_i64(token)?;
            raw.stride_head = to_i64(head)?;
            raw.stride_dim = to_i64(dim)?;
            raw.page_table = page_table.as_ptr();
            raw.num_pages = num_pages.min(u32::MAX as usize) as u32;
            Ok((0, raw))
        }
        _ => {
            let (offset, sh, st, sd) = match *l {
                Layout::HeadsTokensDim => (0, t * d, d, 1),
                Layout::TokensHeadsDim => (0, d, h * d, 1),
                Layout::Strided { offset, head, token, dim } => (offset, head, token, dim),
                Layout::Paged { .. } => unreachable!(),
            };
            let need = extent(&[(sh, h), (st, t), (sd, d)])?;
            let need_all = if need == 0 { 0 } else { offset.checked_add(need).ok_or_else(overflow)? };
            if need_all > len {
                return Err(too_short(need_all));
            }
            raw.kind = sys::NQ_LAYOUT_STRIDED;
            raw.stride_head = to_i64(sh)?;
            raw.stride_token = to_i64(st)?;
            raw.stride_dim = to_i64(sd)?;
            Ok((if need == 0 { 0 } else { offset }, raw))
        }
    }
}

/// One chunk of keys and values to compress (one layer of one sequence).
///
/// ```no_run
/// # use nexusquant::{KvInput, Layout};
/// # let (k, v) = (vec![0u16; 8 * 100 * 128], vec![0u16; 8 * 100 * 128]);
/// let kv = KvInput::f16(&k, &v, 100).layout(Layout::TokensHeadsDim).start_position(0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KvInput<'a> {
    k: Elements<'a>,
    v: Elements<'a>,
    num_tokens: u32,
    k_layout: Layout<'a>,
    v_layout: Layout<'a>,
    positions: Option<&'a [i64]>,
    start_position: i64,
    layer: u32,
    rope_seq_len: u32,
}

impl<'a> KvInput<'a> {
    /// K and V of `num_tokens` tokens, `[heads][tokens][head_dim]` unless a layout is set.
    pub fn new(k: Elements<'a>, v: Elements<'a>, num_tokens: u32) -> KvInput<'a> {
        KvInput {
            k,
            v,
            num_tokens,
            k_layout: Layout::HeadsTokensDim,
            v_layout: Layout::HeadsTokensDim,
            positions: None,
            start_position: 0,
            layer: 0,
            rope_seq_len: 0,
        }
    }
    /// f16 bit patterns.
    pub fn f16(k: &'a [u16], v: &'a [u16], num_tokens: u32) -> KvInput<'a> {
        KvInput::new(Elements::F16(k), Elements::F16(v), num_tokens)
    }
    /// bf16 bit patterns.
    pub fn bf16(k: &'a [u16], v: &'a [u16], num_tokens: u32) -> KvInput<'a> {
        KvInput::new(Elements::Bf16(k), Elements::Bf16(v), num_tokens)
    }
    pub fn f32(k: &'a [f32], v: &'a [f32], num_tokens: u32) -> KvInput<'a> {
        KvInput::new(Elements::F32(k), Elements::F32(v), num_tokens)
    }
    /// The same layout for K and V.
    pub fn layout(mut self, l: Layout<'a>) -> KvInput<'a> {
        self.k_layout = l;
        self.v_layout = l;
        self
    }
    pub fn k_layout(mut self, l: Layout<'a>) -> KvInput<'a> {
        self.k_layout = l;
        self
    }
    pub fn v_layout(mut self, l: Layout<'a>) -> KvInput<'a> {
        self.v_layout = l;
        self
    }
    /// Original position of every token (strictly increasing, < 2^32).
    pub fn positions(mut self, p: &'a [i64]) -> KvInput<'a> {
        self.positions = Some(p);
        self
    }
    /// Positions `start, start + 1, ...` (when no positions are given).
    pub fn start_position(mut self, p: i64) -> KvInput<'a> {
        self.start_position = p;
        self
    }
    /// Selects per-layer overrides; recorded in the block.
    pub fn layer(mut self, layer: u32) -> KvInput<'a> {
        self.layer = layer;
        self
    }
    /// Dynamic NTK: the sequence length the keys were rotated with.
    pub fn rope_seq_len(mut self, n: u32) -> KvInput<'a> {
        self.rope_seq_len = n;
        self
    }
    pub fn num_tokens(&self) -> u32 {
        self.num_tokens
    }

    /// The descriptor, after checking every slice against the shape. The pointers in it
    /// borrow from `self`'s slices.
    pub(crate) fn raw_desc(&self, heads: u32, head_dim: u32) -> Result<sys::nq_kv_desc> {
        let (kt, kp, klen) = self.k.raw();
        let (vt, vp, vlen) = self.v.raw();
        if kt != vt {
            return Err(Error::invalid("kv: K and V have different element types"));
        }
        if let Some(p) = self.positions {
            if p.len() != self.num_tokens as usize {
                return Err(Error::invalid(format!(
                    "kv.positions has {} entries for {} tokens",
                    p.len(),
                    self.num_tokens
                )));
            }
        }
        let (koff, kl) = to_raw_layout(&self.k_layout, heads, self.num_tokens, head_dim, klen, "kv.k")?;
        let (voff, vl) = to_raw_layout(&self.v_layout, heads, self.num_tokens, head_dim, vlen, "kv.v")?;
        let mut kv = new_kv_desc();
        kv.dtype = kt;
        kv.num_tokens = self.num_tokens;
        kv.layer = self.layer;
        kv.rope_seq_len = self.rope_seq_len;
        // The library only reads K and V when compressing (the field is not const in C).
        kv.k = offset_ptr(kp as *mut c_void, koff, kt);
        kv.v = offset_ptr(vp as *mut c_void, voff, vt);
        kv.k_layout = kl;
        kv.v_layout = vl;
        kv.positions = self.positions.map_or(core::ptr::null(), |p| p.as_ptr());
        kv.start_position = self.start_position;
        Ok(kv)
    }
}

/// Destination of a decode: K and V slices and their layouts. The number of tokens is
/// the decoded range's.
#[derive(Debug)]
pub struct KvOutput<'a> {
    k: ElementsMut<'a>,
    v: ElementsMut<'a>,
    k_layout: Layout<'a>,
    v_layout: Layout<'a>,
}

impl<'a> KvOutput<'a> {
    pub fn new(k: ElementsMut<'a>, v: ElementsMut<'a>) -> KvOutput<'a> {
        KvOutput { k, v, k_layout: Layout::HeadsTokensDim, v_layout: Layout::HeadsTokensDim }
    }
    pub fn f16(k: &'a mut [u16], v: &'a mut [u16]) -> KvOutput<'a> {
        KvOutput::new(ElementsMut::F16(k), ElementsMut::F16(v))
    }
    pub fn bf16(k: &'a mut [u16], v: &'a mut [u16]) -> KvOutput<'a> {
        KvOutput::new(ElementsMut::Bf16(k), ElementsMut::Bf16(v))
    }
    pub fn f32(k: &'a mut [f32], v: &'a mut [f32]) -> KvOutput<'a> {
        KvOutput::new(ElementsMut::F32(k), ElementsMut::F32(v))
    }
    pub fn layout(mut self, l: Layout<'a>) -> KvOutput<'a> {
        self.k_layout = l;
        self.v_layout = l;
        self
    }
    pub fn k_layout(mut self, l: Layout<'a>) -> KvOutput<'a> {
        self.k_layout = l;
        self
    }
    pub fn v_layout(mut self, l: Layout<'a>) -> KvOutput<'a> {
        self.v_layout = l;
        self
    }

    pub(crate) fn raw_desc(&mut self, heads: u32, head_dim: u32, tokens: u32) -> Result<sys::nq_kv_desc> {
        let (kt, kp, klen) = self.k.raw();
        let (vt, vp, vlen) = self.v.raw();
        if kt != vt {
            return Err(Error::invalid("out: K and V have different element types"));
        }
        let (koff, kl) = to_raw_layout(&self.k_layout, heads, tokens, head_dim, klen, "out.k")?;
        let (voff, vl) = to_raw_layout(&self.v_layout, heads, tokens, head_dim, vlen, "out.v")?;
        let mut kv = new_kv_desc();
        kv.dtype = kt;
        kv.num_tokens = tokens;
        kv.k = offset_ptr(kp, koff, kt);
        kv.v = offset_ptr(vp, voff, vt);
        kv.k_layout = kl;
        kv.v_layout = vl;
        Ok(kv)
    }
}

/// Importance of the tokens, used only when the layer evicts.
#[derive(Clone, Copy, Debug)]
pub enum Scores<'a> {
    /// Keys with the smallest L2 norm rank highest.
    KeyNorm,
    /// The engine's score of (KV head h, token t) at `scores[h*stride_head + t*stride_token]`.
    Given { scores: &'a [f32], stride_head: usize, stride_token: usize },
    /// The last `num_queries` queries of every query head, `[q_heads][num_queries][head_dim]`
    /// contiguous, with RoPE applied; positions `None` = those of the last keys.
    Queries { queries: Elements<'a>, num_queries: u32, positions: Option<&'a [i64]>, pool_kernel: u32 },
}

impl Scores<'_> {
    pub(crate) fn raw_desc(&self, heads: u32, q_heads: u32, head_dim: u32, tokens: u32) -> Result<sys::nq_score_desc> {
        // SAFETY: plain data; nq_score_desc_init fills it.
        let mut sc: sys::nq_score_desc = unsafe { core::mem::zeroed() };
        unsafe { sys::nq_score_desc_init(&mut sc) };
        match *self {
            Scores::KeyNorm => {}
            Scores::Given { scores, stride_head, stride_token } => {
                if heads > 0 && tokens > 0 {
                    let need = stride_head
                        .checked_mul(heads as usize - 1)
                        .and_then(|a| a.checked_add(stride_token.checked_mul(tokens as usize - 1)?))
                        .and_then(|a| a.checked_add(1));
                    if need.is_none_or(|n| n > scores.len()) {
                        return Err(Error::invalid(format!(
                            "scores: the strides address {need:?} scores, the slice has {}",
                            scores.len()
                        )));
                    }
                }
                sc.kind = sys::NQ_SCORES_GIVEN;
                sc.scores = scores.as_ptr();
                sc.score_stride_head = i64::try_from(stride_head).map_err(|_| Error::invalid("scores: stride"))?;
                sc.score_stride_token = i64::try_from(stride_token).map_err(|_| Error::invalid("scores: stride"))?;
            }
            Scores::Queries { queries, num_queries, positions, pool_kernel } => {
                let (dt, p, len) = queries.raw();
                let need = q_heads as usize * num_queries as usize * head_dim as usize;
                if need > len {
                    return Err(Error::invalid(format!("scores.queries: {need} elements needed, the slice has {len}")));
                }
                if let Some(pos) = positions {
                    if pos.len() != num_queries as usize {
                        return Err(Error::invalid("scores.query_positions: one per query"));
                    }
                }
                sc.kind = sys::NQ_SCORES_QUERIES;
                sc.queries = p;
                sc.query_dtype = dt;
                sc.num_queries = num_queries;
                sc.q_stride_head = num_queries as i64 * head_dim as i64;
                sc.q_stride_token = head_dim as i64;
                sc.q_stride_dim = 1;
                sc.query_positions = positions.map_or(core::ptr::null(), |p| p.as_ptr());
                sc.pool_kernel = pool_kernel;
            }
        }
        Ok(sc)
    }
}

pub(crate) fn new_kv_desc() -> sys::nq_kv_desc {
    // SAFETY: plain data; nq_kv_desc_init fills it.
    let mut kv: sys::nq_kv_desc = unsafe { core::mem::zeroed() };
    unsafe { sys::nq_kv_desc_init(&mut kv) };
    kv
}

fn offset_ptr(p: *mut c_void, elements: usize, dt: sys::nq_dtype) -> *mut c_void {
    let size = if dt == sys::NQ_DTYPE_F32 { 4 } else { 2 };
    // The offset was checked to lie inside the slice (or equal its end when it is empty).
    p.cast::<u8>().wrapping_add(elements * size).cast()
}

//! Raw declarations of `include/nexusquant.h`: every `nq_*` function, struct and enum,
//! written by hand and checked against the header and the library by `tests/abi.rs`
//! (names, parameter names and types, struct sizes and field offsets, enum values).
//!
//! Enums are `c_int` type aliases with one constant per value, not Rust enums: the
//! library may return values this crate does not know, which a Rust enum cannot hold.
//! Everything here is `unsafe` to call; the rules are in the header.
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_void};

/// What the ABI test needs to know about one declared function.
#[derive(Debug)]
pub struct FunctionDecl {
    pub name: &'static str,
    /// (parameter name, Rust type as written)
    pub params: &'static [(&'static str, &'static str)],
    /// Rust return type as written, `()` for none.
    pub ret: &'static str,
}

/// One field of a declared struct.
#[derive(Debug)]
pub struct FieldDecl {
    pub name: &'static str,
    pub ty: &'static str,
    pub offset: usize,
}

/// One declared struct with its Rust layout.
#[derive(Debug)]
pub struct StructDecl {
    pub name: &'static str,
    pub size: usize,
    pub fields: &'static [FieldDecl],
}

/// One declared enum and its values.
#[derive(Debug)]
pub struct EnumDecl {
    pub name: &'static str,
    pub values: &'static [(&'static str, i64)],
}

macro_rules! c_enums {
    ($( $(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $var:ident = $val:expr ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            pub type $name = c_int;
            $( $(#[$vm])* pub const $var: $name = $val; )*
        )*
        /// Every enum of this module, for the ABI test.
        pub const ENUMS: &[EnumDecl] = &[
            $( EnumDecl { name: stringify!($name), values: &[ $( (stringify!($var), $val as i64) ),* ] } ),*
        ];
    };
}

macro_rules! c_structs {
    ($( $(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $field:ident : $fty:ty ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug)]
            pub struct $name { $( $(#[$fm])* pub $field: $fty ),* }
        )*
        /// Every struct of this module with its Rust layout, for the ABI test.
        pub const STRUCTS: &[StructDecl] = &[
            $( StructDecl {
                name: stringify!($name),
                size: core::mem::size_of::<$name>(),
                fields: &[ $( FieldDecl {
                    name: stringify!($field),
                    ty: stringify!($fty),
                    offset: core::mem::offset_of!($name, $field),
                } ),* ],
            } ),*
        ];
    };
}

macro_rules! c_functions {
    ($( $(#[$m:meta])* pub fn $name:ident( $( $arg:ident : $ty:ty ),* $(,)? ) $( -> $ret:ty )?; )*) => {
        extern "C" {
            $( $(#[$m])* pub fn $name( $( $arg: $ty ),* ) $( -> $ret )?; )*
        }
        /// Every function of this module with its signature as written, for the ABI test.
        pub const FUNCTIONS: &[FunctionDecl] = &[
            $( FunctionDecl {
                name: stringify!($name),
                params: &[ $( (stringify!($arg), stringify!($ty)) ),* ],
                ret: c_functions!(@ret $($ret)?),
            } ),*
        ];
        /// The address of every function, resolved by the dynamic linker: taking them
        /// makes a function missing from the library fail the link.
        pub fn function_addresses() -> Vec<(&'static str, usize)> {
            vec![ $( (stringify!($name), $name as *const () as usize) ),* ]
        }
    };
    (@ret) => { "()" };
    (@ret $ret:ty) => { stringify!($ret) };
}

pub const NQ_VERSION_MAJOR: u32 = 0;
pub const NQ_VERSION_MINOR: u32 = 1;
pub const NQ_VERSION_PATCH: u32 = 0;
pub const NQ_VERSION_NUMBER: u32 = NQ_VERSION_MAJOR * 10000 + NQ_VERSION_MINOR * 100 + NQ_VERSION_PATCH;
pub const NQ_PRESET_CONSERVATIVE: nq_preset = NQ_PRESET_HIGH;
pub const NQ_PRESET_AGGRESSIVE: nq_preset = NQ_PRESET_MAX;

c_enums! {
    /// Status of every call that can fail; values are stable and never reused.
    nq_status {
        NQ_OK = 0,
        NQ_ERR_INVALID_ARGUMENT = 1,
        NQ_ERR_UNSUPPORTED = 2,
        NQ_ERR_OUT_OF_MEMORY = 3,
        NQ_ERR_BUFFER_TOO_SMALL = 4,
        NQ_ERR_CORRUPT = 5,
        NQ_ERR_TRUNCATED = 6,
        NQ_ERR_VERSION = 7,
        NQ_ERR_BACKEND_UNAVAILABLE = 8,
        NQ_ERR_DEVICE = 9,
        NQ_ERR_OUT_OF_RANGE = 10,
        NQ_ERR_INTERNAL = 11,
    }
    nq_dtype { NQ_DTYPE_F16 = 1, NQ_DTYPE_BF16 = 2, NQ_DTYPE_F32 = 3 }
    nq_memory { NQ_MEMORY_HOST = 0, NQ_MEMORY_CUDA = 1, NQ_MEMORY_HIP = 2 }
    nq_backend { NQ_BACKEND_AUTO = 0, NQ_BACKEND_CPU = 1, NQ_BACKEND_CUDA = 2, NQ_BACKEND_HIP = 3 }
    nq_cpu_isa { NQ_ISA_AUTO = 0, NQ_ISA_SCALAR = 1, NQ_ISA_AVX2 = 2, NQ_ISA_AVX512 = 3 }
    nq_preset {
        NQ_PRESET_CUSTOM = 0,
        NQ_PRESET_LOSSLESS = 1,
        NQ_PRESET_HIGH = 2,
        NQ_PRESET_BALANCED = 3,
        NQ_PRESET_MAX = 4,
        NQ_PRESET_S = 5,
        NQ_PRESET_M = 6,
        NQ_PRESET_L = 7,
        NQ_PRESET_XL = 8,
    }
    nq_codec { NQ_CODEC_E8 = 1, NQ_CODEC_SCALAR = 2 }
    nq_evict_mode { NQ_EVICT_PER_HEAD = 1, NQ_EVICT_HEAD_SHARED = 2, NQ_EVICT_PAGED = 3 }
    nq_rope_mode { NQ_ROPE_NONE = 0, NQ_ROPE_REMOVE = 1, NQ_ROPE_KEEP = 2 }
    nq_rope_pairing { NQ_ROPE_SPLIT_HALF = 1, NQ_ROPE_INTERLEAVED = 2 }
    nq_rope_scaling {
        NQ_ROPE_SCALING_NONE = 0,
        NQ_ROPE_SCALING_LINEAR = 1,
        NQ_ROPE_SCALING_DYNAMIC_NTK = 2,
        NQ_ROPE_SCALING_LLAMA3 = 3,
        NQ_ROPE_SCALING_YARN = 4,
    }
    nq_layout_kind { NQ_LAYOUT_STRIDED = 1, NQ_LAYOUT_PAGED = 2 }
    nq_score_kind { NQ_SCORES_KEY_NORM = 0, NQ_SCORES_GIVEN = 1, NQ_SCORES_QUERIES = 2 }
}

/// Opaque context handle.
#[repr(C)]
pub struct nq_context {
    _opaque: [u8; 0],
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}
/// Opaque block handle.
#[repr(C)]
pub struct nq_block {
    _opaque: [u8; 0],
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}
/// Opaque sequence handle.
#[repr(C)]
pub struct nq_sequence {
    _opaque: [u8; 0],
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// `alloc(user, bytes, alignment, memory, device)`
pub type nq_alloc_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, bytes: usize, alignment: usize, memory: nq_memory, device: i32) -> *mut c_void>;
/// `free(user, ptr, memory, device)`
pub type nq_free_fn = Option<unsafe extern "C" fn(user: *mut c_void, ptr: *mut c_void, memory: nq_memory, device: i32)>;

c_structs! {
    pub struct nq_rope {
        pub mode: nq_rope_mode,
        pub pairing: nq_rope_pairing,
        pub rotary_dims: u32,
        pub original_max_position: u32,
        pub theta: f64,
        pub scaling: nq_rope_scaling,
        pub reserved0: u32,
        pub factor: f64,
        pub low_freq_factor: f64,
        pub high_freq_factor: f64,
        pub beta_fast: f64,
        pub beta_slow: f64,
        pub attention_factor: f64,
    }
    pub struct nq_allocator {
        pub alloc: nq_alloc_fn,
        pub free: nq_free_fn,
        pub user: *mut c_void,
    }
    pub struct nq_layer_override {
        pub layer_begin: u32,
        pub layer_end: u32,
        pub k_bits: u32,
        pub v_bits: u32,
        pub evict_fraction: f32,
        pub reserved0: u32,
    }
    pub struct nq_config {
        pub size: usize,
        pub head_dim: u32,
        pub num_kv_heads: u32,
        pub num_q_heads: u32,
        pub num_layers: u32,
        pub preset: nq_preset,
        pub codec: nq_codec,
        pub k_bits: u32,
        pub v_bits: u32,
        pub evict_fraction: f32,
        pub target_ratio: f32,
        pub evict_mode: nq_evict_mode,
        pub evict_page_size: u32,
        pub sink_tokens: i32,
        pub recent_window: i32,
        pub fp16_sinks: i32,
        pub fp16_window: i32,
        pub rope: nq_rope,
        pub backend: nq_backend,
        pub device: i32,
        pub cpu_isa: nq_cpu_isa,
        pub num_threads: u32,
        pub allocator: nq_allocator,
        pub overrides: *const nq_layer_override,
        pub num_overrides: u32,
        pub archive_zstd_level: i32,
        pub key_centering: u32,
    }
    pub struct nq_layer_params {
        pub size: usize,
        pub k_bits: u32,
        pub v_bits: u32,
        pub evict_fraction: f32,
        pub sink_tokens: u32,
        pub recent_window: u32,
        pub fp16_sinks: u32,
        pub fp16_window: u32,
    }
    pub struct nq_layout {
        pub kind: nq_layout_kind,
        pub page_size: u32,
        pub stride_head: i64,
        pub stride_token: i64,
        pub stride_dim: i64,
        pub stride_page: i64,
        pub page_table: *const i32,
        pub num_pages: u32,
        pub reserved0: u32,
    }
    pub struct nq_kv_desc {
        pub size: usize,
        pub dtype: nq_dtype,
        pub memory: nq_memory,
        pub device: i32,
        pub layer: u32,
        pub num_tokens: u32,
        pub rope_seq_len: u32,
        pub k: *mut c_void,
        pub v: *mut c_void,
        pub k_layout: nq_layout,
        pub v_layout: nq_layout,
        pub positions: *const i64,
        pub start_position: i64,
    }
    pub struct nq_score_desc {
        pub size: usize,
        pub kind: nq_score_kind,
        pub memory: nq_memory,
        pub scores: *const f32,
        pub score_stride_head: i64,
        pub score_stride_token: i64,
        pub queries: *const c_void,
        pub query_dtype: nq_dtype,
        pub num_queries: u32,
        pub q_stride_head: i64,
        pub q_stride_token: i64,
        pub q_stride_dim: i64,
        pub query_positions: *const i64,
        pub pool_kernel: u32,
        pub reserved0: u32,
    }
    pub struct nq_buffer {
        pub data: *mut c_void,
        pub capacity: usize,
    }
    pub struct nq_block_info {
        pub size: usize,
        pub layer: u32,
        pub num_heads: u32,
        pub head_dim: u32,
        pub tokens_in: u32,
        pub tokens_kept: u32,
        pub k_bits: u32,
        pub v_bits: u32,
        pub codec: nq_codec,
        pub evict_mode: nq_evict_mode,
        pub rope_mode: nq_rope_mode,
        pub fp16_sinks: u32,
        pub fp16_window: u32,
        pub positions_per_head: u32,
        pub memory: nq_memory,
        pub device: i32,
        pub reserved0: u32,
        pub first_position: i64,
        pub last_position: i64,
        pub original_bytes: u64,
        pub resident_bytes: u64,
        pub ratio: f64,
        pub header_bytes: u64,
        pub position_bytes: u64,
        pub scale_bytes: u64,
        pub code_bytes: u64,
        pub fp16_bytes: u64,
        pub padding_bytes: u64,
        pub key_mean_bytes: u64,
    }
    pub struct nq_block_peek_info {
        pub size: usize,
        pub is_archive: u32,
        pub header_valid: u32,
        pub layer: u32,
        pub num_heads: u32,
        pub head_dim: u32,
        pub tokens_in: u32,
        pub tokens_kept: u32,
        pub k_bits: u32,
        pub v_bits: u32,
        pub codec: nq_codec,
        pub evict_mode: nq_evict_mode,
        pub rope_mode: nq_rope_mode,
        pub fp16_sinks: u32,
        pub fp16_window: u32,
        pub positions_per_head: u32,
        pub reserved0: u32,
        pub first_position: i64,
        pub resident_bytes: u64,
        pub stored_bytes: u64,
    }
    pub struct nq_attention_desc {
        pub size: usize,
        pub memory: nq_memory,
        pub device: i32,
        pub num_seqs: u32,
        pub q_tokens: u32,
        pub dtype: nq_dtype,
        pub reserved0: u32,
        pub block_images: *const *const c_void,
        pub block_indptr: *const u32,
        pub q: *const c_void,
        pub q_stride_seq: i64,
        pub q_stride_token: i64,
        pub q_stride_head: i64,
        pub out: *mut c_void,
        pub out_stride_seq: i64,
        pub out_stride_token: i64,
        pub out_stride_head: i64,
        pub lse: *mut f32,
        pub q_positions: *const i64,
        pub scale: f32,
        pub softcap: f32,
        pub window: u32,
        pub num_splits: u32,
    }
}

c_functions! {
    pub fn nq_version_number() -> u32;
    pub fn nq_version_string() -> *const c_char;
    pub fn nq_status_string(status: nq_status) -> *const c_char;
    pub fn nq_last_error() -> *const c_char;
    pub fn nq_preset_from_name(name: *const c_char, out: *mut nq_preset) -> nq_status;
    pub fn nq_preset_name(preset: nq_preset) -> *const c_char;
    pub fn nq_config_init(cfg: *mut nq_config);
    pub fn nq_kv_desc_init(kv: *mut nq_kv_desc);
    pub fn nq_layout_contiguous(layout: *mut nq_layout, num_tokens: u32, head_dim: u32);
    pub fn nq_score_desc_init(scores: *mut nq_score_desc);
    pub fn nq_context_create(cfg: *const nq_config, out: *mut *mut nq_context) -> nq_status;
    pub fn nq_context_free(ctx: *mut nq_context);
    pub fn nq_context_get_config(ctx: *const nq_context, out: *mut nq_config) -> nq_status;
    pub fn nq_context_layer_params(ctx: *const nq_context, layer: u32, out: *mut nq_layer_params) -> nq_status;
    pub fn nq_context_cpu_isa(ctx: *const nq_context) -> *const c_char;
    pub fn nq_context_backend(ctx: *const nq_context) -> nq_backend;
    pub fn nq_compress_bound(ctx: *const nq_context, kv: *const nq_kv_desc, bytes: *mut usize) -> nq_status;
    pub fn nq_workspace_size(
        ctx: *const nq_context,
        items: *const nq_kv_desc,
        num_items: usize,
        bytes: *mut usize,
    ) -> nq_status;
    pub fn nq_kv_cache_bytes(layers: u64, kv_heads: u64, head_dim: u64, tokens: u64, bytes_per_element: u64) -> u64;
    pub fn nq_estimate_bytes(ctx: *const nq_context, layers: u32, tokens: u64, bytes: *mut u64) -> nq_status;
    pub fn nq_compress_kv(
        ctx: *mut nq_context,
        kv: *const nq_kv_desc,
        scores: *const nq_score_desc,
        stream: *mut c_void,
        out: *mut *mut nq_block,
    ) -> nq_status;
    pub fn nq_compress_batch(
        ctx: *mut nq_context,
        items: *const nq_kv_desc,
        scores: *const nq_score_desc,
        num_items: usize,
        dst: *const nq_buffer,
        workspace: *mut c_void,
        workspace_bytes: usize,
        stream: *mut c_void,
        out: *mut *mut nq_block,
        item_status: *mut nq_status,
    ) -> nq_status;
    pub fn nq_decode_block(
        ctx: *mut nq_context,
        blk: *const nq_block,
        token_begin: u32,
        token_end: u32,
        out: *const nq_kv_desc,
        stream: *mut c_void,
    ) -> nq_status;
    pub fn nq_decode(
        ctx: *mut nq_context,
        blk: *const nq_block,
        token_begin: u32,
        token_end: u32,
        out: *const nq_kv_desc,
        stream: *mut c_void,
    ) -> nq_status;
    pub fn nq_block_get_info(blk: *const nq_block, out: *mut nq_block_info) -> nq_status;
    pub fn nq_block_peek(bytes: *const c_void, len: usize, out: *mut nq_block_peek_info) -> nq_status;
    pub fn nq_block_positions(blk: *const nq_block, head: u32, token_begin: u32, token_end: u32, dst: *mut i64)
        -> nq_status;
    pub fn nq_block_data(blk: *const nq_block, data: *mut *const c_void, bytes: *mut usize) -> nq_status;
    pub fn nq_block_digest(blk: *const nq_block, digest: *mut u64) -> nq_status;
    pub fn nq_block_serialize_bound(blk: *const nq_block, bytes: *mut usize) -> nq_status;
    pub fn nq_block_serialize(
        ctx: *mut nq_context,
        blk: *const nq_block,
        dst: *mut c_void,
        capacity: usize,
        written: *mut usize,
    ) -> nq_status;
    pub fn nq_block_deserialize(ctx: *mut nq_context, src: *const c_void, len: usize, out: *mut *mut nq_block)
        -> nq_status;
    pub fn nq_block_free(blk: *mut nq_block);
    pub fn nq_block_copy(
        ctx: *mut nq_context,
        src: *const nq_block,
        memory: nq_memory,
        device: i32,
        dst: *mut c_void,
        capacity: usize,
        stream: *mut c_void,
        out: *mut *mut nq_block,
    ) -> nq_status;
    pub fn nq_sequence_create(ctx: *mut nq_context, layer: u32, out: *mut *mut nq_sequence) -> nq_status;
    pub fn nq_sequence_append(
        seq: *mut nq_sequence,
        kv: *const nq_kv_desc,
        scores: *const nq_score_desc,
        stream: *mut c_void,
    ) -> nq_status;
    pub fn nq_sequence_append_block(seq: *mut nq_sequence, blk: *mut nq_block) -> nq_status;
    pub fn nq_sequence_num_blocks(seq: *const nq_sequence) -> usize;
    pub fn nq_sequence_block(seq: *const nq_sequence, index: usize) -> *const nq_block;
    pub fn nq_sequence_totals(
        seq: *const nq_sequence,
        tokens: *mut u64,
        bytes: *mut u64,
        original_bytes: *mut u64,
    ) -> nq_status;
    pub fn nq_sequence_decode(
        seq: *mut nq_sequence,
        token_begin: u32,
        token_end: u32,
        out: *const nq_kv_desc,
        stream: *mut c_void,
    ) -> nq_status;
    pub fn nq_sequence_positions(
        seq: *const nq_sequence,
        head: u32,
        token_begin: u32,
        token_end: u32,
        dst: *mut i64,
    ) -> nq_status;
    pub fn nq_sequence_free(seq: *mut nq_sequence);
    pub fn nq_attention_desc_init(desc: *mut nq_attention_desc);
    pub fn nq_attention_workspace_size(
        ctx: *const nq_context,
        desc: *const nq_attention_desc,
        bytes: *mut usize,
    ) -> nq_status;
    pub fn nq_attention_decode(
        ctx: *mut nq_context,
        desc: *const nq_attention_desc,
        workspace: *mut c_void,
        workspace_bytes: usize,
        stream: *mut c_void,
    ) -> nq_status;
    pub fn nq_attention_merge(
        out: *mut f32,
        lse: *mut f32,
        out_b: *const f32,
        lse_b: *const f32,
        rows: usize,
        dim: u32,
    ) -> nq_status;
    pub fn nq_abi_sizeof(type_name: *const c_char) -> usize;
    pub fn nq_abi_offsetof(type_name: *const c_char, field_name: *const c_char) -> usize;
}

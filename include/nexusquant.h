/*
 * nexusquant.h - KV-cache compression for LLM inference.
 *
 * This header is the manual of libnexusquant. It is C99 and compiles as C++.
 *
 * What the library does
 * ---------------------
 * An inference engine hands the library the keys and values of one layer of one
 * sequence (or many of them in one call), described by a layout (strided or paged)
 * and a dtype. The library keeps the most important tokens (optional eviction),
 * removes RoPE from the keys, rotates every head vector with a Walsh-Hadamard
 * transform, quantises each group of 8 floats to a point of the E8 lattice inside a
 * bounded codebook (or, for comparison, with a scalar quantiser of the same bits), and
 * packs the codes at a fixed rate. The result is a *block*: real bytes, typically
 * 5-30x smaller than the fp16 cache, that can be decoded (all of it or a token range)
 * back into the engine's own layout, serialised to a checksummed archive form for
 * offload or transfer, and deserialised again.
 *
 * Every mode is lossy, including the preset called "lossless" (which only means "no
 * eviction"). Compression ratios reported by the library count every byte of a block.
 *
 * Conventions
 * -----------
 * - Every function that can fail returns an nq_status; outputs are written through
 *   pointer arguments that come last. On failure outputs are left untouched (or set to
 *   NULL for handle outputs) and nq_last_error() names the argument or field at fault.
 * - Handles are opaque. Every *_free function accepts NULL.
 * - Option structs start with a `size` field: set it with the matching *_init function
 *   (or to sizeof the struct). A caller compiled against an older, smaller struct still
 *   works: the fields it did not send take their defaults. A caller whose struct is
 *   larger than the library's is accepted only if the bytes the library does not know
 *   are all zero; otherwise NQ_ERR_UNSUPPORTED is returned. A size that no version of
 *   the struct can have (inside a field, below the fields without defaults, not a
 *   multiple of 8 or above 4096 bytes when larger) is an uninitialised `size`:
 *   NQ_ERR_INVALID_ARGUMENT ("call nq_config_init"), before anything past `size` is
 *   read. Fields named reserved0 must be 0 (NQ_ERR_UNSUPPORTED otherwise). An array of such structs
 *   (the items and scores of nq_compress_batch, the items of nq_workspace_size) is
 *   strided by its first element's size, which every element must share.
 * - Strides are in elements, not bytes, and may be negative; every offset a layout
 *   reaches, times the element size, must fit in int64 (INT64_MIN is never a valid
 *   stride). Pointers need only the alignment of their element type, with one
 *   exception: block images in caller memory (nq_compress_batch and nq_block_copy
 *   `dst`) are 16-byte aligned.
 * - Nothing synchronises a device, throws, or aborts. `stream` arguments are a
 *   cudaStream_t / hipStream_t for GPU backends and are ignored by the CPU backend.
 *
 * Threads
 * -------
 * - nq_last_error() is per thread: read it on the thread that made the failing call.
 * - A context may be used from many threads at once for everything that takes an
 *   nq_context (compress, batch, decode, serialise, deserialise, block copy, sequence
 *   calls on different sequences). Its configuration is read-only after creation; its
 *   only mutable state is guarded: the thread pool of num_threads runs one call's work
 *   at a time and a call that finds it busy runs on the calling thread instead, and GPU
 *   RoPE tables are built under a lock. Each call uses its own scratch (or the
 *   workspace the caller passes: one workspace per concurrent call). A custom allocator
 *   of a context shared by threads is called from those threads and must be
 *   thread-safe.
 * - Blocks are immutable after creation: any number of threads may decode, serialise,
 *   copy or inspect one block at once.
 * - A sequence is not safe for concurrent mutation: nq_sequence_append and
 *   nq_sequence_append_block must not run on one sequence from two threads at once,
 *   nor while another thread reads or decodes it. Reads and decodes of one sequence
 *   (nq_sequence_decode, _positions, _totals, _block, _num_blocks) may run concurrently
 *   while nobody appends.
 * - Freeing a handle while another thread uses it is the caller's bug.
 *
 * Ownership and lifetimes
 * -----------------------
 * - Every handle a call returns through an `out` argument belongs to the caller, who
 *   frees it with the matching *_free. A block given to nq_sequence_append_block
 *   belongs to the sequence once that call succeeds (not on failure); blocks returned
 *   by nq_sequence_block are borrowed and live until the sequence is freed.
 * - A block does not refer to the context that made it: it may outlive that context
 *   and be decoded with any context of the same num_kv_heads and head_dim (a GPU
 *   decode also wants the block's RoPE parameters in the context). It frees
 *   its bytes through the allocator of the context that made it, so a custom
 *   allocator (and its user pointer) must stay valid until the block is freed. A
 *   block built in caller memory (nq_compress_batch `dst`, nq_block_copy `dst`) never
 *   frees that memory, which must outlive the block.
 * - A sequence refers to its context: free every sequence before the context.
 * - The library keeps no pointer to caller memory past a call: config structs,
 *   overrides, descriptors, K/V, scores and positions are read during the call only
 *   (GPU work enqueued on a stream reads device K/V until the stream passes it).
 *
 * Memory
 * ------
 * The library allocates only through the nq_allocator of the context (malloc/free by
 * default), and only for: the context itself, block and sequence handles and block
 * bytes (unless the caller provides the block buffer), and scratch when the caller
 * passes no workspace. nq_workspace_size() and nq_compress_bound() let a caller own all
 * of it. One exception: the archive form (nq_block_serialize, nq_block_deserialize)
 * calls zstd through its stable API, which takes its own scratch from malloc.
 *
 * GPU backends
 * ------------
 * A library built with NQ_CUDA (or NQ_HIP) compresses and decodes K/V in device memory
 * (nq_kv_desc.memory = NQ_MEMORY_CUDA) on the GPU; config.backend AUTO picks the GPU
 * for device pointers and the CPU for host pointers. GPU blocks live in device memory
 * (nq_block_info.memory) and hold the same bytes the CPU backend writes; nq_block_copy
 * moves blocks between host and device. Everything is enqueued on the caller's stream:
 * - nq_compress_batch: one launch for all items (ragged lengths, strided or paged);
 *   `workspace` and `dst` are device memory; scores GIVEN may be host or device memory,
 *   QUERIES device memory. Page tables and positions stay host arrays (the library
 *   carries them to the device in kernel parameters, which graphs capture by value).
 * - Without a workspace (nq_compress_kv, sequences) device scratch comes from the
 *   allocator and is released once the work is enqueued: an allocator's free must not
 *   hand that memory to other work before the stream has passed it (cudaFree waits).
 *   The default allocator uses cudaMalloc/cudaFree.
 * - RoPE tables (float64, rounded once, as on the CPU) are built on the host and copied
 *   to the device once per context and device, growing with the largest position seen;
 *   that first call waits for its copy on a private stream. Make one call before
 *   capturing a stream into a graph. Dynamic NTK scaling is CPU-only for now.
 * - Invalid values (inf/nan) cannot fail a call that has already been enqueued: the CPU
 *   backend rejects them (NQ_ERR_INVALID_ARGUMENT naming the head and token, also for
 *   tokens kept as fp16 and for f32/bf16 values beyond fp16's range there), the GPU
 *   stores a quantised vector with a NaN scale and a token kept as fp16 as converted
 *   (inf/nan kept; values beyond fp16's range become inf), and decode gives them back
 *   non-finite. Validate on the host when such values can occur.
 */
#ifndef NEXUSQUANT_H
#define NEXUSQUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  if defined(NQ_BUILDING_LIBRARY)
#    define NQ_API __declspec(dllexport)
#  else
#    define NQ_API
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define NQ_API __attribute__((visibility("default")))
#else
#  define NQ_API
#endif

/* The enums of this header have int as their fixed underlying type in C++. A C caller
 * (or a binding) may store any int in an enum field or argument, and the library, which
 * is C++, must be able to load it and reject it with a status: without a fixed type,
 * loading a value outside an enum's declared range is undefined behaviour in C++. Size
 * and calling convention are those of a C enum (int). */
#if defined(__cplusplus) && __cplusplus >= 201103L
#  define NQ_ENUM_BASE : int
#else
#  define NQ_ENUM_BASE
#endif

/* ---------------------------------------------------------------- version */

#define NQ_VERSION_MAJOR 0
#define NQ_VERSION_MINOR 1
#define NQ_VERSION_PATCH 0
/* MAJOR*10000 + MINOR*100 + PATCH */
#define NQ_VERSION_NUMBER (NQ_VERSION_MAJOR * 10000 + NQ_VERSION_MINOR * 100 + NQ_VERSION_PATCH)

/* The run-time library's version, as NQ_VERSION_NUMBER. Compare with the macro to
 * detect a header/library mismatch. */
NQ_API uint32_t nq_version_number(void);
/* "MAJOR.MINOR.PATCH", static storage. */
NQ_API const char *nq_version_string(void);

/* ---------------------------------------------------------------- status */

/* Values are stable and never reused. */
typedef enum nq_status NQ_ENUM_BASE {
    NQ_OK = 0,
    NQ_ERR_INVALID_ARGUMENT = 1,  /* a NULL pointer, impossible value or stride */
    NQ_ERR_UNSUPPORTED = 2,       /* valid but not supported (dtype, head_dim, bits, unknown struct bytes) */
    NQ_ERR_OUT_OF_MEMORY = 3,     /* the allocator returned NULL */
    NQ_ERR_BUFFER_TOO_SMALL = 4,  /* the caller's buffer is smaller than required */
    NQ_ERR_CORRUPT = 5,           /* bytes fail their checksum or hold impossible values */
    NQ_ERR_TRUNCATED = 6,         /* bytes end before the format says they do */
    NQ_ERR_VERSION = 7,           /* bytes from an unknown format version, or not ours */
    NQ_ERR_BACKEND_UNAVAILABLE = 8, /* the backend was not built in or has no device */
    NQ_ERR_DEVICE = 9,            /* a device runtime call failed */
    NQ_ERR_OUT_OF_RANGE = 10,     /* an index or token range outside the object */
    NQ_ERR_INTERNAL = 11          /* a bug: please report it with nq_last_error() */
} nq_status;

/* A short static name for a status ("NQ_ERR_CORRUPT: ..."); never NULL. */
NQ_API const char *nq_status_string(nq_status status);

/* The message of the last failing call made by this thread (empty string if none).
 * Valid until the next nq_* call on this thread. Never NULL. */
NQ_API const char *nq_last_error(void);

/* ---------------------------------------------------------------- enums */

typedef enum nq_dtype NQ_ENUM_BASE {
    NQ_DTYPE_F16 = 1,
    NQ_DTYPE_BF16 = 2,
    NQ_DTYPE_F32 = 3
} nq_dtype;

/* Where a pointer points. */
typedef enum nq_memory NQ_ENUM_BASE {
    NQ_MEMORY_HOST = 0,
    NQ_MEMORY_CUDA = 1,
    NQ_MEMORY_HIP = 2
} nq_memory;

typedef enum nq_backend NQ_ENUM_BASE {
    NQ_BACKEND_AUTO = 0, /* the backend that matches the memory of the pointers */
    NQ_BACKEND_CPU = 1,
    NQ_BACKEND_CUDA = 2,
    NQ_BACKEND_HIP = 3
} nq_backend;

/* Instruction sets of the CPU backend. AUTO takes the best the CPU and OS support,
 * capped by the environment variable NQ_CPU_ISA=scalar|avx2|avx512 when set. */
typedef enum nq_cpu_isa NQ_ENUM_BASE {
    NQ_ISA_AUTO = 0,
    NQ_ISA_SCALAR = 1,
    NQ_ISA_AVX2 = 2,
    NQ_ISA_AVX512 = 3
} nq_cpu_isa;

/* Quality presets. The ratios are what the presets aim for on a long context with
 * head_dim 128; nq_block_info() reports the real ratio of every block.
 *   LOSSLESS  quantisation only (no eviction): K 3 bits, V 2 bits, about 6x. LOSSY.
 *   HIGH      (alias CONSERVATIVE) about 10x: quantisation + light eviction.
 *   BALANCED  about 16x.
 *   MAX       (alias AGGRESSIVE) about 30x.
 *   S/M/L/XL  explicit ratio targets 5x/10x/17x/33x.
 *   CUSTOM    k_bits, v_bits and evict_fraction of nq_config as given.
 * Bits from the data: when neither k_bits nor v_bits is set (and for layers whose
 * override sets no bits), a preset's K/V bits are nominal. Compressing host K/V with
 * NQ_SCORES_QUERIES in host memory, each block chooses its own pair from the error
 * quantisation causes in those queries' attention outputs: LOSSLESS..MAX are a
 * distortion target with a ratio floor (5x, 8x, 12x, 25x): a block may spend one bit
 * more than nominal (on K or V) where the floor allows it, never fewer. A target ratio
 * and S/M/L/XL keep their planned bits. Without host queries, and on the GPU path,
 * blocks keep the nominal bits. The block records its bits (nq_block_info). */
typedef enum nq_preset NQ_ENUM_BASE {
    NQ_PRESET_CUSTOM = 0,
    NQ_PRESET_LOSSLESS = 1,
    NQ_PRESET_HIGH = 2,
    NQ_PRESET_BALANCED = 3,
    NQ_PRESET_MAX = 4,
    NQ_PRESET_S = 5,
    NQ_PRESET_M = 6,
    NQ_PRESET_L = 7,
    NQ_PRESET_XL = 8
} nq_preset;
#define NQ_PRESET_CONSERVATIVE NQ_PRESET_HIGH
#define NQ_PRESET_AGGRESSIVE NQ_PRESET_MAX

/* Parses "lossless", "high", "conservative", "balanced", "max", "aggressive", "S", "M",
 * "L", "XL" (case-insensitive) and "custom". */
NQ_API nq_status nq_preset_from_name(const char *name, nq_preset *out);
/* The canonical lower-case name of a preset; "unknown" if it is not one. */
NQ_API const char *nq_preset_name(nq_preset preset);

typedef enum nq_codec NQ_ENUM_BASE {
    NQ_CODEC_E8 = 1,     /* E8 lattice vector quantiser (the product) */
    NQ_CODEC_SCALAR = 2  /* uniform scalar quantiser at the same bits (the baseline) */
} nq_codec;

/* Which tokens eviction keeps (sinks and the recent window are always kept). */
typedef enum nq_evict_mode NQ_ENUM_BASE {
    NQ_EVICT_PER_HEAD = 1,    /* top-k per KV head, the same k for every head */
    NQ_EVICT_HEAD_SHARED = 2, /* one top-k for all heads (scores summed over heads) */
    NQ_EVICT_PAGED = 3        /* whole pages of evict_page_size tokens */
} nq_evict_mode;

/* How RoPE relates to the keys the engine passes in and wants back. */
typedef enum nq_rope_mode NQ_ENUM_BASE {
    NQ_ROPE_NONE = 0,   /* keys carry no RoPE; nothing is removed or applied */
    NQ_ROPE_REMOVE = 1, /* keys carry RoPE: removed before quantising (better codes),
                           applied again at the original positions on decode */
    NQ_ROPE_KEEP = 2    /* keys carry RoPE and are quantised as they are; decode returns
                           them rotated (what a fused attention kernel reads cheapest) */
} nq_rope_mode;

typedef enum nq_rope_pairing NQ_ENUM_BASE {
    NQ_ROPE_SPLIT_HALF = 1,  /* pairs (i, i + rotary_dims/2): Llama, Mistral, Qwen, NeoX */
    NQ_ROPE_INTERLEAVED = 2  /* pairs (2i, 2i + 1): GPT-J style, llama.cpp's "normal" mode */
} nq_rope_pairing;

typedef enum nq_rope_scaling NQ_ENUM_BASE {
    NQ_ROPE_SCALING_NONE = 0,
    NQ_ROPE_SCALING_LINEAR = 1,      /* positions divided by factor */
    NQ_ROPE_SCALING_DYNAMIC_NTK = 2, /* base grown with the sequence length (see nq_kv_desc.rope_seq_len) */
    NQ_ROPE_SCALING_LLAMA3 = 3,      /* Llama 3.1 frequency-dependent scaling */
    NQ_ROPE_SCALING_YARN = 4         /* YaRN ramp + attention factor */
} nq_rope_scaling;

/* RoPE as the model applies it to keys; the fields follow Hugging Face's
 * `rope_scaling` semantics. Fields that a scaling type does not use are ignored. */
typedef struct nq_rope {
    nq_rope_mode mode;           /* default NQ_ROPE_REMOVE */
    nq_rope_pairing pairing;     /* default NQ_ROPE_SPLIT_HALF */
    uint32_t rotary_dims;        /* rotated leading dims (partial rotary); 0 = head_dim */
    uint32_t original_max_position; /* llama3/yarn/dynamic: original context length */
    double theta;                /* base; default 10000 */
    nq_rope_scaling scaling;
    uint32_t reserved0;
    double factor;               /* scaling factor (>= 1) */
    double low_freq_factor;      /* llama3; default 1 */
    double high_freq_factor;     /* llama3; default 4 */
    double beta_fast;            /* yarn; default 32 */
    double beta_slow;            /* yarn; default 1 */
    double attention_factor;     /* yarn; 0 = 0.1*ln(factor) + 1 */
} nq_rope;

/* Allocator callbacks. `memory`/`device` say which memory is wanted; a CPU-only build
 * asks only for NQ_MEMORY_HOST. alloc returns NULL on failure. Alignment is a power of
 * two <= 4096. */
typedef struct nq_allocator {
    void *(*alloc)(void *user, size_t bytes, size_t alignment, nq_memory memory, int32_t device);
    void (*free)(void *user, void *ptr, nq_memory memory, int32_t device);
    void *user;
} nq_allocator;

/* Per-layer override of bits and eviction for layers [layer_begin, layer_end).
 * A zero bits field or a negative evict_fraction keeps the context's value. */
typedef struct nq_layer_override {
    uint32_t layer_begin;
    uint32_t layer_end;
    uint32_t k_bits;
    uint32_t v_bits;
    float evict_fraction;
    uint32_t reserved0;
} nq_layer_override;

/* ---------------------------------------------------------------- config */

typedef struct nq_config {
    size_t size;                 /* sizeof(nq_config), set by nq_config_init */
    uint32_t head_dim;           /* multiple of 8, 8..512 */
    uint32_t num_kv_heads;       /* 1..4096 */
    uint32_t num_q_heads;        /* query heads (GQA); 0 = num_kv_heads; multiple of it */
    uint32_t num_layers;         /* 0 = unknown; only used to resolve negative override layers */
    nq_preset preset;            /* default NQ_PRESET_LOSSLESS */
    nq_codec codec;              /* default NQ_CODEC_E8 */
    uint32_t k_bits;             /* 1..8; 0 = the preset's */
    uint32_t v_bits;             /* 1..8; 0 = the preset's */
    float evict_fraction;        /* [0, 1) of the tokens to evict; < 0 = the preset's */
    float target_ratio;          /* > 0: choose bits and eviction for this ratio (overrides preset) */
    nq_evict_mode evict_mode;    /* default NQ_EVICT_PER_HEAD */
    uint32_t evict_page_size;    /* NQ_EVICT_PAGED: page size in tokens; 0 = the paged input's */
    int32_t sink_tokens;         /* first tokens always kept; < 0 = the preset's (4) */
    int32_t recent_window;       /* last tokens always kept; < 0 = the preset's */
    int32_t fp16_sinks;          /* sinks stored as fp16, not quantised; < 0 = the preset's */
    int32_t fp16_window;         /* last tokens of a block stored as fp16; < 0 = the preset's */
    nq_rope rope;
    nq_backend backend;          /* default NQ_BACKEND_AUTO */
    int32_t device;              /* GPU ordinal for GPU backends */
    nq_cpu_isa cpu_isa;          /* cap on the CPU instruction set; default AUTO */
    uint32_t num_threads;        /* CPU threads; 0 = 1 (the library starts no threads unasked) */
    nq_allocator allocator;      /* NULL alloc = malloc/free (host only) */
    const nq_layer_override *overrides; /* copied at context creation */
    uint32_t num_overrides;
    int32_t archive_zstd_level;  /* zstd level of the archive form; 0 = 3; < 0 = no zstd */
    uint32_t key_centering;      /* 1 (default): code keys minus their per-(block, head) mean
                                  * in the rotated domain, stored at fp16 beside the codes
                                  * (header flag bit 3, docs/FORMAT.md 1.8); 0: keys as they
                                  * are. Models whose keys carry a large per-channel bias lose
                                  * tens of percent of perplexity without it; it costs
                                  * heads * head_dim * 2 bytes per block. Every backend
                                  * compresses, decodes, copies and attends such blocks (the
                                  * same bytes on each). */
} nq_config;

/* Fills *cfg with the defaults and sets cfg->size. Always call it first. */
NQ_API void nq_config_init(nq_config *cfg);

/* The bits and eviction a context uses for one layer after presets, target ratio and
 * overrides are resolved. */
typedef struct nq_layer_params {
    size_t size;
    uint32_t k_bits;
    uint32_t v_bits;
    float evict_fraction;
    uint32_t sink_tokens;
    uint32_t recent_window;
    uint32_t fp16_sinks;
    uint32_t fp16_window;
} nq_layer_params;

/* ---------------------------------------------------------------- layouts */

typedef enum nq_layout_kind NQ_ENUM_BASE {
    NQ_LAYOUT_STRIDED = 1,
    NQ_LAYOUT_PAGED = 2
} nq_layout_kind;

/* Where element (head h, token t, dim d) of K or V lives, relative to the base pointer.
 * Strided:  base[h*stride_head + t*stride_token + d*stride_dim]
 *           e.g. [heads][tokens][dim] contiguous: stride_head = T*D, stride_token = D,
 *           stride_dim = 1; [tokens][heads][dim]: stride_token = H*D, stride_head = D.
 * Paged:    p = page_table[t / page_size], s = t % page_size;
 *           base[p*stride_page + s*stride_token + h*stride_head + d*stride_dim]
 *           vLLM/FlashInfer NHD: stride_token = H*D, stride_head = D;
 *           HND: stride_head = page_size*D, stride_token = D.
 * Distinct (h, t, d) must not map to the same element (checked for strided layouts and
 * for the pages of a paged one). */
typedef struct nq_layout {
    nq_layout_kind kind;
    uint32_t page_size;          /* paged */
    int64_t stride_head;
    int64_t stride_token;
    int64_t stride_dim;          /* 0 is taken as 1 */
    int64_t stride_page;         /* paged */
    const int32_t *page_table;   /* paged: host memory, ceil(num_tokens/page_size) entries */
    uint32_t num_pages;          /* paged: pages the base pointer holds (bounds check) */
    uint32_t reserved0;
} nq_layout;

/* One (layer, sequence, chunk) of keys and values. For compress the K and V memory is
 * read; for decode it is written. */
typedef struct nq_kv_desc {
    size_t size;                 /* sizeof(nq_kv_desc), set by nq_kv_desc_init */
    nq_dtype dtype;
    nq_memory memory;            /* where k and v point */
    int32_t device;
    uint32_t layer;              /* selects per-layer overrides; recorded in the block */
    uint32_t num_tokens;
    uint32_t rope_seq_len;       /* dynamic NTK: sequence length the keys were rotated
                                    with; 0 = max position + 1 */
    void *k;
    void *v;
    nq_layout k_layout;
    nq_layout v_layout;
    const int64_t *positions;    /* compress: original position of each token (host,
                                    strictly increasing, >= 0, < 2^32); NULL = start_position + i,
                                    where start_position + num_tokens - 1 < 2^32 */
    int64_t start_position;
} nq_kv_desc;

/* Fills *kv with zeros and sets kv->size. */
NQ_API void nq_kv_desc_init(nq_kv_desc *kv);

/* A helper for the commonest case: contiguous [heads][tokens][head_dim] K and V. */
NQ_API void nq_layout_contiguous(nq_layout *layout, uint32_t num_tokens, uint32_t head_dim);

/* ---------------------------------------------------------------- scores */

typedef enum nq_score_kind NQ_ENUM_BASE {
    NQ_SCORES_KEY_NORM = 0, /* no scores: keys with the smallest L2 norm rank highest */
    NQ_SCORES_GIVEN = 1,    /* the engine's scores per (KV head, token), higher = keep */
    NQ_SCORES_QUERIES = 2   /* attention of the last queries over all keys */
} nq_score_kind;

/* Importance of the tokens of one nq_kv_desc. Only used when eviction is on. */
typedef struct nq_score_desc {
    size_t size;                 /* sizeof(nq_score_desc), set by nq_score_desc_init */
    nq_score_kind kind;
    nq_memory memory;            /* where scores / queries point */
    /* NQ_SCORES_GIVEN: fp32 score of (head h, token t) at scores[h*stride_head + t*stride_token] */
    const float *scores;
    int64_t score_stride_head;
    int64_t score_stride_token;
    /* NQ_SCORES_QUERIES: num_queries query vectors per query head, with RoPE applied as
     * the model applied it: q[h*q_stride_head + i*q_stride_token + d*q_stride_dim].
     * Each query attends (causally, softmax over keys with position <= its own) to the
     * keys; probabilities are summed over the queries, max-pooled over pool_kernel
     * neighbouring tokens, and summed over the query heads of each KV head. */
    const void *queries;
    nq_dtype query_dtype;
    uint32_t num_queries;
    int64_t q_stride_head;
    int64_t q_stride_token;
    int64_t q_stride_dim;        /* 0 is taken as 1 */
    const int64_t *query_positions; /* NULL = the positions of the last num_queries keys */
    uint32_t pool_kernel;        /* odd, < 1024; 0 = 15; 1 = no pooling */
    uint32_t reserved0;
} nq_score_desc;

NQ_API void nq_score_desc_init(nq_score_desc *scores);

/* ---------------------------------------------------------------- handles */

typedef struct nq_context nq_context;
typedef struct nq_block nq_block;
typedef struct nq_sequence nq_sequence;

/* Creates a context. Validates every field; the config is copied (overrides too). */
NQ_API nq_status nq_context_create(const nq_config *cfg, nq_context **out);
NQ_API void nq_context_free(nq_context *ctx);

/* The resolved config (presets expanded into bits and eviction for layer 0). */
NQ_API nq_status nq_context_get_config(const nq_context *ctx, nq_config *out);
/* Bits and eviction for one layer. */
NQ_API nq_status nq_context_layer_params(const nq_context *ctx, uint32_t layer, nq_layer_params *out);
/* The CPU instruction set the context's CPU backend runs ("scalar", "avx2", "avx512"). */
NQ_API const char *nq_context_cpu_isa(const nq_context *ctx);
/* The backend a context was created for, after AUTO was resolved for host memory. */
NQ_API nq_backend nq_context_backend(const nq_context *ctx);

/* ---------------------------------------------------------------- sizes */

/* Bytes of the block that compressing *kv will produce (its resident form): exact when
 * the bits are fixed; when blocks choose their bits from the data (see nq_preset) the
 * size of the largest candidate pair, an upper bound known before any data is read. */
NQ_API nq_status nq_compress_bound(const nq_context *ctx, const nq_kv_desc *kv, size_t *bytes);

/* Scratch bytes that compressing (or, with kv describing a block's size, decoding) the
 * given items needs when the caller passes a workspace (host: including up to 63
 * bytes the library skips to align a workspace of any alignment). */
NQ_API nq_status nq_workspace_size(const nq_context *ctx, const nq_kv_desc *items, size_t num_items,
                                   size_t *bytes);

/* The KV-cache arithmetic: 2 (K and V) x layers x kv_heads x head_dim x tokens x
 * bytes_per_element. Use the number of KV heads, not query heads, for GQA models. */
NQ_API uint64_t nq_kv_cache_bytes(uint64_t layers, uint64_t kv_heads, uint64_t head_dim, uint64_t tokens,
                                  uint64_t bytes_per_element);

/* Resident bytes that `layers` blocks of `tokens` tokens each (one per layer) take
 * under the context's settings, exactly as nq_compress_bound would report them for
 * contiguous positions (an upper bound where blocks choose their bits). */
NQ_API nq_status nq_estimate_bytes(const nq_context *ctx, uint32_t layers, uint64_t tokens, uint64_t *bytes);

/* ---------------------------------------------------------------- compress */

/* Compresses one (layer, sequence, chunk). scores may be NULL (key-norm proxy, used
 * only if the layer evicts). The block is allocated with the context's allocator in
 * the memory of kv (host for the CPU backend). */
NQ_API nq_status nq_compress_kv(nq_context *ctx, const nq_kv_desc *kv, const nq_score_desc *scores,
                                void *stream, nq_block **out);

/* Caller-owned block memory for nq_compress_batch. */
typedef struct nq_buffer {
    void *data;
    size_t capacity;
} nq_buffer;

/* Compresses many (layer, sequence, chunk) items of ragged lengths in one call.
 *   items      num_items descriptors, strided by items[0].size (all the same size)
 *   scores     NULL, or num_items descriptors strided by scores[0].size (an entry with
 *              kind KEY_NORM and no data is fine)
 *   dst        NULL (blocks allocated by the context's allocator), or num_items caller
 *              buffers of at least nq_compress_bound() bytes each, which must outlive the
 *              blocks (the block handles are still allocated by the allocator: small, host)
 *              (16-byte aligned: NQ_ERR_INVALID_ARGUMENT otherwise)
 *   workspace  NULL (scratch from the allocator; workspace_bytes must then be 0), or
 *              nq_workspace_size() bytes: any alignment in host memory (the library
 *              rounds the start up to 64 bytes, which nq_workspace_size counts), 64-byte
 *              aligned in device memory (cudaMalloc/hipMalloc memory is)
 *   out        num_items block handles; entries of failed items are NULL
 *   item_status NULL or num_items statuses, always all written: each item's own, or,
 *              when the call fails before the items (a NULL argument, an array whose
 *              size cannot stride it), the call's status for every item
 * Returns NQ_OK if every item succeeded, else the first failing item's status (the
 * others still ran). */
NQ_API nq_status nq_compress_batch(nq_context *ctx, const nq_kv_desc *items, const nq_score_desc *scores,
                                   size_t num_items, const nq_buffer *dst, void *workspace,
                                   size_t workspace_bytes, void *stream, nq_block **out,
                                   nq_status *item_status);

/* ---------------------------------------------------------------- decode */

/* Decodes tokens [token_begin, token_end) of one block (indices among the kept tokens,
 * in order of original position) into the engine's layout described by out:
 * out->num_tokens must be token_end - token_begin, out->dtype F16, BF16 or F32,
 * out->k/out->v the destination, token i of the range written at token index i of the
 * layouts. The K and V outputs must not share an element (NQ_ERR_INVALID_ARGUMENT
 * otherwise; interleaved K/V caches whose elements are distinct are fine). Keys come
 * back with RoPE applied at their original positions (NQ_ROPE_REMOVE, NQ_ROPE_KEEP) or
 * without (NQ_ROPE_NONE). With per-head eviction each head's kept tokens differ:
 * nq_block_positions() tells which original position every decoded row holds. The
 * output is in the block's memory (host, or the GPU backend's device memory, enqueued
 * on `stream`). */
NQ_API nq_status nq_decode_block(nq_context *ctx, const nq_block *blk, uint32_t token_begin, uint32_t token_end,
                                 const nq_kv_desc *out, void *stream);

/* The same function under its 0.1 name, kept for ABI compatibility: callers built
 * against 0.1 and the bindings of that release call it. New code calls
 * nq_decode_block. */
NQ_API nq_status nq_decode(nq_context *ctx, const nq_block *blk, uint32_t token_begin, uint32_t token_end,
                           const nq_kv_desc *out, void *stream);

/* ---------------------------------------------------------------- blocks */

typedef struct nq_block_info {
    size_t size;                 /* set by the caller (sizeof) */
    uint32_t layer;
    uint32_t num_heads;
    uint32_t head_dim;
    uint32_t tokens_in;          /* tokens given to compress */
    uint32_t tokens_kept;        /* tokens per head stored */
    uint32_t k_bits;
    uint32_t v_bits;
    nq_codec codec;
    nq_evict_mode evict_mode;
    nq_rope_mode rope_mode;
    uint32_t fp16_sinks;         /* leading kept tokens stored as fp16 */
    uint32_t fp16_window;        /* trailing kept tokens stored as fp16 */
    uint32_t positions_per_head; /* 1 if each head has its own positions */
    nq_memory memory;
    int32_t device;
    uint32_t reserved0;
    int64_t first_position;
    int64_t last_position;
    uint64_t original_bytes;     /* fp16 bytes of the K and V given: 2*heads*tokens_in*head_dim*2 */
    uint64_t resident_bytes;     /* every byte of the block */
    double ratio;                /* original_bytes / resident_bytes */
    /* byte breakdown of the resident form */
    uint64_t header_bytes;
    uint64_t position_bytes;
    uint64_t scale_bytes;
    uint64_t code_bytes;
    uint64_t fp16_bytes;
    uint64_t padding_bytes;
    uint64_t key_mean_bytes;     /* the k_mean section (key centering, FORMAT.md 1.8); 0 without it */
} nq_block_info;

NQ_API nq_status nq_block_get_info(const nq_block *blk, nq_block_info *out);

/* What the header of an archive (nq_block_serialize) or of a resident block image
 * (nq_block_data) says, read without a context and without decoding anything: a reader
 * learns the shape to create its context with. An archive's checksum is not verified
 * here (nq_block_deserialize does that); header_valid says whether the header's fields
 * are consistent with each other. */
typedef struct nq_block_peek_info {
    size_t size;                 /* set by the caller (sizeof) */
    uint32_t is_archive;         /* 1: an archive, 0: a resident image */
    uint32_t header_valid;       /* 1: every header field is in range and consistent */
    uint32_t layer;
    uint32_t num_heads;
    uint32_t head_dim;
    uint32_t tokens_in;
    uint32_t tokens_kept;
    uint32_t k_bits;
    uint32_t v_bits;
    nq_codec codec;
    nq_evict_mode evict_mode;
    nq_rope_mode rope_mode;
    uint32_t fp16_sinks;
    uint32_t fp16_window;
    uint32_t positions_per_head;
    uint32_t reserved0;
    int64_t first_position;
    uint64_t resident_bytes;     /* the resident image's bytes, as its header says */
    uint64_t stored_bytes;       /* the archive's own bytes as its prefix says (resident: resident_bytes) */
} nq_block_peek_info;

/* Fills *out from the first bytes of an archive or resident image (at least 144 bytes
 * of an archive, 128 of an image). NQ_ERR_VERSION when the bytes are neither (or of a
 * format version this library does not read), NQ_ERR_TRUNCATED when too few. */
NQ_API nq_status nq_block_peek(const void *bytes, size_t len, nq_block_peek_info *out);

/* Original positions of tokens [token_begin, token_end) of one head (any head when
 * positions are shared). Host blocks only. */
NQ_API nq_status nq_block_positions(const nq_block *blk, uint32_t head, uint32_t token_begin, uint32_t token_end,
                                    int64_t *dst);

/* The resident bytes of a block (in the block's memory) and their count. */
NQ_API nq_status nq_block_data(const nq_block *blk, const void **data, size_t *bytes);

/* XXH3-64 of the resident bytes (host blocks): equal digests mean identical blocks. */
NQ_API nq_status nq_block_digest(const nq_block *blk, uint64_t *digest);

/* Upper bound of the archive form's bytes. */
NQ_API nq_status nq_block_serialize_bound(const nq_block *blk, size_t *bytes);

/* Writes the archive form (positions delta-coded, sections zstd-compressed where that
 * makes them smaller, XXH3-64 checksum) into dst. ctx gives the zstd level and the
 * allocator for scratch. */
NQ_API nq_status nq_block_serialize(nq_context *ctx, const nq_block *blk, void *dst, size_t capacity,
                                    size_t *written);

/* Reads an archive (resident images are refused) into a new host block. Truncated,
 * tampered or foreign bytes return NQ_ERR_TRUNCATED / NQ_ERR_CORRUPT / NQ_ERR_VERSION;
 * nothing is read past len. */
NQ_API nq_status nq_block_deserialize(nq_context *ctx, const void *src, size_t len, nq_block **out);

NQ_API void nq_block_free(nq_block *blk);

/* Copies a block into `memory` (NQ_MEMORY_HOST, or the GPU backend's memory) of
 * `device`: host to device, device to host, or host to host. dst: NULL (the image is
 * allocated with the context's allocator) or caller memory of `capacity` >= the
 * block's bytes, 16-byte aligned, which must outlive the copy. A copy that involves a
 * device is enqueued on `stream` and nothing waits for it: the new block may be read on
 * the host (digest, serialise, positions) once the stream has passed the copy, and the
 * source must live until then. Into pageable host memory the runtime may finish the copy
 * before returning; into pinned memory it overlaps other work. The usual way to archive
 * a device block: nq_block_copy to the host, wait for the stream (or an event), then
 * nq_block_serialize on any CPU thread. */
NQ_API nq_status nq_block_copy(nq_context *ctx, const nq_block *src, nq_memory memory, int32_t device, void *dst,
                               size_t capacity, void *stream, nq_block **out);

/* ---------------------------------------------------------------- sequences */

/* A growing (layer, sequence): the prefill is compressed once, later chunks of tokens
 * are appended as new blocks; nothing stored is compressed again. Tokens are numbered
 * across blocks in append order. */
NQ_API nq_status nq_sequence_create(nq_context *ctx, uint32_t layer, nq_sequence **out);
/* Compresses kv (kv->layer is ignored: the sequence's layer is used) and appends the
 * block. Positions must continue after the last appended position. The first append
 * (the prefill) is compressed as nq_compress_kv would. Later appends keep no recent
 * window and no fp16 window (those tokens stop being recent at the next append; an
 * engine keeps its latest tokens at full precision until it appends them), and:
 *   scores NULL      the chunk is quantised only, never evicted (ranking just-generated
 *                    tokens by key norm alone costs quality);
 *   scores given     evicted at the layer's evict_fraction by those scores; a descriptor
 *                    of kind NQ_SCORES_KEY_NORM asks for the key-norm proxy.
 * So under an evicting preset a sequence appended with scores reaches about the ratio
 * of the same tokens compressed as one block, and one appended with NULL scores the
 * ratio of quantisation alone for its later chunks (docs/DESIGN.md, "Sequences", has
 * both). Nothing stored is compressed again. */
NQ_API nq_status nq_sequence_append(nq_sequence *seq, const nq_kv_desc *kv, const nq_score_desc *scores,
                                    void *stream);
/* Appends an existing block; the sequence takes ownership on success. */
NQ_API nq_status nq_sequence_append_block(nq_sequence *seq, nq_block *blk);
NQ_API size_t nq_sequence_num_blocks(const nq_sequence *seq);
/* Borrowed; valid until the sequence is freed. NULL if index is out of range. */
NQ_API const nq_block *nq_sequence_block(const nq_sequence *seq, size_t index);
/* Kept tokens per head over all blocks, and resident bytes over all blocks. */
NQ_API nq_status nq_sequence_totals(const nq_sequence *seq, uint64_t *tokens, uint64_t *bytes,
                                    uint64_t *original_bytes);
/* Decodes tokens [token_begin, token_end) of the whole sequence (they may span blocks). */
NQ_API nq_status nq_sequence_decode(nq_sequence *seq, uint32_t token_begin, uint32_t token_end,
                                    const nq_kv_desc *out, void *stream);
/* Original positions of tokens [token_begin, token_end) of one head. */
NQ_API nq_status nq_sequence_positions(const nq_sequence *seq, uint32_t head, uint32_t token_begin,
                                       uint32_t token_end, int64_t *dst);
NQ_API void nq_sequence_free(nq_sequence *seq);

/* ---------------------------------------------------------------- attention */

/* Decode-step attention that reads resident blocks as they are (no decode to fp16).
 *
 * For every sequence s, query token i (0..q_tokens-1) and query head h, with
 * g = h / (num_q_heads / num_kv_heads) its KV head, over the kept tokens t of KV head g
 * in the sequence's blocks:
 *   x_t   = scale * dot(q[s,i,h], k_t)             k_t as decode would return it (RoPE
 *                                                  at the original position for blocks
 *                                                  with NQ_ROPE_REMOVE or NQ_ROPE_KEEP)
 *   x_t   = softcap * tanh(x_t / softcap)          when softcap > 0
 *   visible: always when q_positions is NULL; else pos_t <= qpos (causal) and, when
 *            window > 0, qpos - pos_t < window
 *   lse[s,i,h] = ln(sum over visible t of exp(x_t))        (-INFINITY if none visible)
 *   out[s,i,h] = sum over visible t of exp(x_t - lse) v_t  (zeros if none visible)
 * Queries carry RoPE as the model applied it. With per-head eviction each KV head
 * attends its own kept tokens (nq_block_positions says which).
 *
 * Merging with attention over other keys (the engine's own uncompressed recent
 * tokens, or another call): for two partial results (o1, lse1) and (o2, lse2) of the
 * same query, lse = lse_max + ln(exp(lse1 - lse_max) + exp(lse2 - lse_max)) with
 * lse_max = max(lse1, lse2), and o = exp(lse1 - lse) o1 + exp(lse2 - lse) o2; a part
 * with lse = -INFINITY contributes nothing. nq_attention_merge does this on the host. */
typedef struct nq_attention_desc {
    size_t size;                 /* sizeof(nq_attention_desc), set by nq_attention_desc_init */
    nq_memory memory;            /* where block_images, block_indptr, q, out, lse and
                                    q_positions point (and the blocks' images live) */
    int32_t device;
    uint32_t num_seqs;           /* sequences in the batch */
    uint32_t q_tokens;           /* query tokens per sequence, 1..64 */
    nq_dtype dtype;              /* of q and out: F16, BF16 or F32 */
    uint32_t reserved0;
    /* The block table: sequence s owns block_images[block_indptr[s] .. block_indptr[s+1]),
     * in order of position. Each entry is a resident image (nq_block_data()) whose
     * num_heads and head_dim match the context. With device memory the table may be
     * rewritten between graph replays: the kernel reads it when it runs. */
    const void *const *block_images;
    const uint32_t *block_indptr; /* num_seqs + 1 entries, non-decreasing */
    /* q[s, i, h, d] at q + s*q_stride_seq + i*q_stride_token + h*q_stride_head + d
     * (elements); a zero stride takes the dense value ([seqs][q_tokens][q_heads][dim]). */
    const void *q;
    int64_t q_stride_seq;
    int64_t q_stride_token;
    int64_t q_stride_head;
    /* out[s, i, h, d] likewise, in dtype. */
    void *out;
    int64_t out_stride_seq;
    int64_t out_stride_token;
    int64_t out_stride_head;
    float *lse;                  /* NULL, or fp32 [num_seqs][q_tokens][num_q_heads] */
    const int64_t *q_positions;  /* NULL (no mask), or [num_seqs][q_tokens] positions */
    float scale;                 /* softmax scale; 0 = 1/sqrt(head_dim) */
    float softcap;               /* logit soft-cap; 0 = none */
    uint32_t window;             /* sliding window in positions; 0 = none (needs q_positions) */
    uint32_t num_splits;         /* pieces each (sequence, KV head) is split into on a GPU;
                                    0 = the library chooses from the batch and the device */
} nq_attention_desc;

/* Fills *desc with zeros, then sets desc->size, dtype = NQ_DTYPE_F16 and q_tokens = 1
 * (a zero dtype or token count names nothing, so a decode step needs only pointers). */
NQ_API void nq_attention_desc_init(nq_attention_desc *desc);

/* Scratch bytes nq_attention_decode needs for this batch when the caller passes a
 * workspace (a function of num_seqs, q_tokens, the heads and num_splits only, so a
 * graph captured with one workspace may replay over any block table). */
NQ_API nq_status nq_attention_workspace_size(const nq_context *ctx, const nq_attention_desc *desc, size_t *bytes);

/* Attention of the queries over the sequences' blocks, on the backend of desc->memory
 * (the CPU for host memory), enqueued on `stream` for a GPU: one launch, nothing
 * synchronises, capturable into a CUDA graph. workspace: NULL (scratch from the
 * context's allocator) or nq_attention_workspace_size() bytes in desc->memory. Host
 * block tables are validated (every image's header, its heads and head_dim); device
 * tables are read by the kernel and must hold images the library wrote. */
NQ_API nq_status nq_attention_decode(nq_context *ctx, const nq_attention_desc *desc, void *workspace,
                                     size_t workspace_bytes, void *stream);

/* Merges two partial attention results of the same queries (host memory, fp32):
 * out[r*dim + d] and lse[r] for r in [0, rows) become the attention over both key sets;
 * (out_b, lse_b) is read. Either may be a result with no visible key (lse -INFINITY). */
NQ_API nq_status nq_attention_merge(float *out, float *lse, const float *out_b, const float *lse_b, size_t rows,
                                    uint32_t dim);

/* ---------------------------------------------------------------- ABI introspection */

/* sizeof / offsetof of the public structs as this library was built, so bindings can
 * check their copies of the layouts: type names are "nq_config", "nq_kv_desc", ...;
 * fields as declared ("rope.theta" for nested ones). Returns (size_t)-1 when unknown. */
NQ_API size_t nq_abi_sizeof(const char *type_name);
NQ_API size_t nq_abi_offsetof(const char *type_name, const char *field_name);

#ifdef __cplusplus
}
#endif

#endif /* NEXUSQUANT_H */

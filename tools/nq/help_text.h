// Help text of the option groups several commands share (string literals, so that a
// command's usage is one literal).
#pragma once

#define NQ_HELP_INPUT                                                                          \
    "input:\n"                                                                                 \
    "  --k K.npy --v V.npy   [layers, kv_heads, tokens, head_dim] or [kv_heads, tokens,\n"      \
    "                        head_dim]; float16, float32, or bfloat16 (ml_dtypes arrays are\n"  \
    "                        saved as raw '<V2': add --dtype bf16)\n"                          \
    "  --positions P.npy     int64 original positions, [tokens] or [layers, tokens],\n"        \
    "                        strictly increasing (default 0..tokens-1)\n"

#define NQ_HELP_SYNTHETIC                                                                      \
    "  --synthetic KIND      instead of files: gaussian (i.i.d. N(0,1)) or outlier (keys with\n" \
    "                        4 channels per head x20 and a heavy tail, like LLM keys)\n"       \
    "  --layers L --kv-heads H --tokens T --head-dim D   shape (defaults 1, 8, 4096, 128)\n"  \
    "  --seed S              seed of the generator (default 1; same seed, same data)\n"        \
    "  --dtype T             f16 (default), bf16 or f32: the dtype handed to the library\n"

#define NQ_HELP_PIPELINE                                                                       \
    "compression:\n"                                                                           \
    "  --preset P            lossless (default: K3/V2, no eviction; lossy like every preset),\n" \
    "                        high, balanced, max, S, M, L, XL, custom\n"                       \
    "  --k-bits B --v-bits B bits per dimension of keys / values (1..8); override the preset\n" \
    "  --evict F             fraction of tokens to evict, [0, 1) (default: the preset's)\n"   \
    "  --evict-mode M        per-head (default), shared or paged\n"                            \
    "  --page-size N         pages of --evict-mode paged (default 16 tokens)\n"                \
    "  --codec C             e8 (default) or scalar (the baseline at equal bits)\n"            \
    "  --rope M              none (default), remove or keep. The default is none because\n"    \
    "                        random and synthetic data carry no RoPE; keys saved from a model\n" \
    "                        after RoPE want remove (with the model's --rope-theta)\n"         \
    "  --rope-theta X        RoPE base (default 10000)\n"                                      \
    "  --rope-pairing P      split (default: Llama, Mistral, Qwen) or interleaved (GPT-J)\n"    \
    "  --rotary-dims N       rotated leading dims (default: head_dim)\n"                       \
    "  --zstd-level N        zstd level of the archive form, 1..19, or -1 for none (default 3)\n" \
    "  --no-key-centering    code keys as they are (default: minus their per-(block, head) mean)\n" \
    "  --key-centering       code keys minus their per-(block, head) mean (the default)\n"

#define NQ_HELP_RUNTIME                                                                        \
    "runtime:\n"                                                                               \
    "  --backend B           auto (default), cpu, cuda or hip\n"                               \
    "  --isa I               auto (default), scalar, avx2 or avx512: cap on the CPU code path\n" \
    "  --threads N           CPU threads of the library (default 1)\n"

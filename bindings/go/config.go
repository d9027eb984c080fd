package nexusquant

// #include "shim.h"
import "C"

import "unsafe"

// Preset is a quality preset (nq_preset).
type Preset int

const (
	PresetCustom   Preset = C.NQ_PRESET_CUSTOM
	PresetLossless Preset = C.NQ_PRESET_LOSSLESS
	PresetHigh     Preset = C.NQ_PRESET_HIGH
	PresetBalanced Preset = C.NQ_PRESET_BALANCED
	PresetMax      Preset = C.NQ_PRESET_MAX
	PresetS        Preset = C.NQ_PRESET_S
	PresetM        Preset = C.NQ_PRESET_M
	PresetL        Preset = C.NQ_PRESET_L
	PresetXL       Preset = C.NQ_PRESET_XL
)

// PresetFromName parses "lossless", "high", "conservative", "balanced", "max",
// "aggressive", "S", "M", "L", "XL" and "custom".
func PresetFromName(name string) (Preset, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var p C.nq_preset
	err := call(func() C.nq_status { return C.nq_preset_from_name(cs, &p) })
	return Preset(p), err
}

func (p Preset) String() string { return C.GoString(C.nq_preset_name(C.nq_preset(p))) }

type Codec int

const (
	CodecE8     Codec = C.NQ_CODEC_E8
	CodecScalar Codec = C.NQ_CODEC_SCALAR
)

type EvictMode int

const (
	EvictPerHead    EvictMode = C.NQ_EVICT_PER_HEAD
	EvictHeadShared EvictMode = C.NQ_EVICT_HEAD_SHARED
	EvictPaged      EvictMode = C.NQ_EVICT_PAGED
)

type RopeMode int

const (
	RopeNone   RopeMode = C.NQ_ROPE_NONE
	RopeRemove RopeMode = C.NQ_ROPE_REMOVE
	RopeKeep   RopeMode = C.NQ_ROPE_KEEP
)

type RopePairing int

const (
	RopeSplitHalf   RopePairing = C.NQ_ROPE_SPLIT_HALF
	RopeInterleaved RopePairing = C.NQ_ROPE_INTERLEAVED
)

type RopeScaling int

const (
	RopeScalingNone       RopeScaling = C.NQ_ROPE_SCALING_NONE
	RopeScalingLinear     RopeScaling = C.NQ_ROPE_SCALING_LINEAR
	RopeScalingDynamicNTK RopeScaling = C.NQ_ROPE_SCALING_DYNAMIC_NTK
	RopeScalingLlama3     RopeScaling = C.NQ_ROPE_SCALING_LLAMA3
	RopeScalingYarn       RopeScaling = C.NQ_ROPE_SCALING_YARN
)

// Rope describes RoPE as the model applies it to keys (Hugging Face's rope_scaling
// meanings). Zero fields take the library's defaults where the header gives one.
type Rope struct {
	Mode                RopeMode
	Pairing             RopePairing
	RotaryDims          uint32 // 0 = head_dim
	Theta               float64
	Scaling             RopeScaling
	Factor              float64
	OriginalMaxPosition uint32
	LowFreqFactor       float64 // llama3
	HighFreqFactor      float64 // llama3
	BetaFast, BetaSlow  float64 // yarn
	AttentionFactor     float64 // yarn; 0 = 0.1 ln(factor) + 1
}

// LayerOverride sets bits and eviction for layers [LayerBegin, LayerEnd); zero bits
// and a negative EvictFraction keep the context's values.
type LayerOverride struct {
	LayerBegin, LayerEnd uint32
	KBits, VBits         uint32
	EvictFraction        float32
}

// Config is a context's configuration. Start from NewConfig, which holds the
// library's defaults (nq_config_init), and change fields.
type Config struct {
	HeadDim       uint32
	NumKVHeads    uint32
	NumQHeads     uint32 // 0 = NumKVHeads
	NumLayers     uint32
	Preset        Preset
	Codec         Codec
	KBits, VBits  uint32  // 0 = the preset's
	EvictFraction float32 // < 0 = the preset's
	TargetRatio   float32 // > 0 overrides the preset
	EvictMode     EvictMode
	EvictPageSize uint32
	SinkTokens    int32 // < 0 = the preset's
	RecentWindow  int32 // < 0 = the preset's
	FP16Sinks     int32 // < 0 = the preset's
	FP16Window    int32 // < 0 = the preset's
	Rope          Rope
	NumThreads    uint32 // CPU threads of the context; 0 = none started
	// ArchiveZstdLevel: 0 = the library's default (3), < 0 = no zstd.
	ArchiveZstdLevel int32
	// KeyCentering codes keys minus their per-(block, head) mean (docs/FORMAT.md 1.8);
	// on by default (NewConfig takes the library's defaults).
	KeyCentering bool
	Overrides    []LayerOverride
}

// NewConfig returns the library's defaults for numKVHeads heads of headDim.
func NewConfig(headDim, numKVHeads uint32) Config {
	var c C.nq_config
	C.nq_config_init(&c)
	return Config{
		HeadDim:       headDim,
		NumKVHeads:    numKVHeads,
		NumQHeads:     uint32(c.num_q_heads),
		NumLayers:     uint32(c.num_layers),
		Preset:        Preset(c.preset),
		Codec:         Codec(c.codec),
		KBits:         uint32(c.k_bits),
		VBits:         uint32(c.v_bits),
		EvictFraction: float32(c.evict_fraction),
		TargetRatio:   float32(c.target_ratio),
		EvictMode:     EvictMode(c.evict_mode),
		EvictPageSize: uint32(c.evict_page_size),
		SinkTokens:    int32(c.sink_tokens),
		RecentWindow:  int32(c.recent_window),
		FP16Sinks:     int32(c.fp16_sinks),
		FP16Window:    int32(c.fp16_window),
		Rope: Rope{
			Mode:                RopeMode(c.rope.mode),
			Pairing:             RopePairing(c.rope.pairing),
			RotaryDims:          uint32(c.rope.rotary_dims),
			Theta:               float64(c.rope.theta),
			Scaling:             RopeScaling(c.rope.scaling),
			Factor:              float64(c.rope.factor),
			OriginalMaxPosition: uint32(c.rope.original_max_position),
			LowFreqFactor:       float64(c.rope.low_freq_factor),
			HighFreqFactor:      float64(c.rope.high_freq_factor),
			BetaFast:            float64(c.rope.beta_fast),
			BetaSlow:            float64(c.rope.beta_slow),
			AttentionFactor:     float64(c.rope.attention_factor),
		},
		NumThreads:       uint32(c.num_threads),
		ArchiveZstdLevel: int32(c.archive_zstd_level),
		KeyCentering:     c.key_centering != 0,
	}
}

func (cfg *Config) raw() C.nq_config {
	var c C.nq_config
	C.nq_config_init(&c)
	c.head_dim = C.uint32_t(cfg.HeadDim)
	c.num_kv_heads = C.uint32_t(cfg.NumKVHeads)
	c.num_q_heads = C.uint32_t(cfg.NumQHeads)
	c.num_layers = C.uint32_t(cfg.NumLayers)
	c.preset = C.nq_preset(cfg.Preset)
	c.codec = C.nq_codec(cfg.Codec)
	c.k_bits = C.uint32_t(cfg.KBits)
	c.v_bits = C.uint32_t(cfg.VBits)
	c.evict_fraction = C.float(cfg.EvictFraction)
	c.target_ratio = C.float(cfg.TargetRatio)
	c.evict_mode = C.nq_evict_mode(cfg.EvictMode)
	c.evict_page_size = C.uint32_t(cfg.EvictPageSize)
	c.sink_tokens = C.int32_t(cfg.SinkTokens)
	c.recent_window = C.int32_t(cfg.RecentWindow)
	c.fp16_sinks = C.int32_t(cfg.FP16Sinks)
	c.fp16_window = C.int32_t(cfg.FP16Window)
	r := &c.rope
	r.mode = C.nq_rope_mode(cfg.Rope.Mode)
	r.pairing = C.nq_rope_pairing(cfg.Rope.Pairing)
	r.rotary_dims = C.uint32_t(cfg.Rope.RotaryDims)
	r.theta = C.double(cfg.Rope.Theta)
	r.scaling = C.nq_rope_scaling(cfg.Rope.Scaling)
	r.factor = C.double(cfg.Rope.Factor)
	r.original_max_position = C.uint32_t(cfg.Rope.OriginalMaxPosition)
	r.low_freq_factor = C.double(cfg.Rope.LowFreqFactor)
	r.high_freq_factor = C.double(cfg.Rope.HighFreqFactor)
	r.beta_fast = C.double(cfg.Rope.BetaFast)
	r.beta_slow = C.double(cfg.Rope.BetaSlow)
	r.attention_factor = C.double(cfg.Rope.AttentionFactor)
	c.num_threads = C.uint32_t(cfg.NumThreads)
	c.archive_zstd_level = C.int32_t(cfg.ArchiveZstdLevel)
	c.key_centering = 0
	if cfg.KeyCentering {
		c.key_centering = 1
	}
	return c
}

func configFromRaw(c *C.nq_config) Config {
	cfg := NewConfig(uint32(c.head_dim), uint32(c.num_kv_heads))
	cfg.NumQHeads = uint32(c.num_q_heads)
	cfg.NumLayers = uint32(c.num_layers)
	cfg.Preset = Preset(c.preset)
	cfg.Codec = Codec(c.codec)
	cfg.KBits, cfg.VBits = uint32(c.k_bits), uint32(c.v_bits)
	cfg.EvictFraction = float32(c.evict_fraction)
	cfg.TargetRatio = float32(c.target_ratio)
	cfg.EvictMode = EvictMode(c.evict_mode)
	cfg.EvictPageSize = uint32(c.evict_page_size)
	cfg.SinkTokens, cfg.RecentWindow = int32(c.sink_tokens), int32(c.recent_window)
	cfg.FP16Sinks, cfg.FP16Window = int32(c.fp16_sinks), int32(c.fp16_window)
	cfg.Rope.Mode = RopeMode(c.rope.mode)
	cfg.Rope.Pairing = RopePairing(c.rope.pairing)
	cfg.Rope.RotaryDims = uint32(c.rope.rotary_dims)
	cfg.Rope.Theta = float64(c.rope.theta)
	cfg.Rope.Scaling = RopeScaling(c.rope.scaling)
	cfg.Rope.Factor = float64(c.rope.factor)
	cfg.Rope.OriginalMaxPosition = uint32(c.rope.original_max_position)
	cfg.NumThreads = uint32(c.num_threads)
	cfg.ArchiveZstdLevel = int32(c.archive_zstd_level)
	cfg.KeyCentering = c.key_centering != 0
	return cfg
}

// LayerParams are the bits and eviction a context uses for one layer.
type LayerParams struct {
	KBits, VBits             uint32
	EvictFraction            float32
	SinkTokens, RecentWindow uint32
	FP16Sinks, FP16Window    uint32
}

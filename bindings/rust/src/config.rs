//! Context configuration: a builder over `nq_config`.
use crate::sys;

/// Quality presets (see `nq_preset` in the header for what each aims for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// `k_bits`, `v_bits` and `evict_fraction` as set.
    Custom,
    /// Quantisation only, no eviction (still lossy).
    Lossless,
    High,
    Balanced,
    Max,
    S,
    M,
    L,
    Xl,
}

impl Preset {
    pub fn raw(self) -> sys::nq_preset {
        match self {
            Preset::Custom => sys::NQ_PRESET_CUSTOM,
            Preset::Lossless => sys::NQ_PRESET_LOSSLESS,
            Preset::High => sys::NQ_PRESET_HIGH,
            Preset::Balanced => sys::NQ_PRESET_BALANCED,
            Preset::Max => sys::NQ_PRESET_MAX,
            Preset::S => sys::NQ_PRESET_S,
            Preset::M => sys::NQ_PRESET_M,
            Preset::L => sys::NQ_PRESET_L,
            Preset::Xl => sys::NQ_PRESET_XL,
        }
    }

    /// Parses the names the library knows ("balanced", "conservative", "XL", ...).
    pub fn from_name(name: &str) -> crate::Result<Preset> {
        let c = std::ffi::CString::new(name).map_err(|_| crate::Error::invalid("preset name contains NUL"))?;
        let mut raw: sys::nq_preset = 0;
        // SAFETY: c is NUL-terminated; raw is a valid out pointer.
        crate::error::check(unsafe { sys::nq_preset_from_name(c.as_ptr(), &mut raw) })?;
        Ok(match raw {
            sys::NQ_PRESET_CUSTOM => Preset::Custom,
            sys::NQ_PRESET_LOSSLESS => Preset::Lossless,
            sys::NQ_PRESET_HIGH => Preset::High,
            sys::NQ_PRESET_BALANCED => Preset::Balanced,
            sys::NQ_PRESET_MAX => Preset::Max,
            sys::NQ_PRESET_S => Preset::S,
            sys::NQ_PRESET_M => Preset::M,
            sys::NQ_PRESET_L => Preset::L,
            _ => Preset::Xl,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// E8 lattice vector quantiser.
    E8,
    /// Uniform scalar quantiser of the same bits (the baseline).
    Scalar,
}

impl Codec {
    pub fn raw(self) -> sys::nq_codec {
        match self {
            Codec::E8 => sys::NQ_CODEC_E8,
            Codec::Scalar => sys::NQ_CODEC_SCALAR,
        }
    }
    pub fn from_raw(raw: sys::nq_codec) -> Option<Codec> {
        match raw {
            sys::NQ_CODEC_E8 => Some(Codec::E8),
            sys::NQ_CODEC_SCALAR => Some(Codec::Scalar),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictMode {
    PerHead,
    HeadShared,
    Paged,
}

impl EvictMode {
    pub fn raw(self) -> sys::nq_evict_mode {
        match self {
            EvictMode::PerHead => sys::NQ_EVICT_PER_HEAD,
            EvictMode::HeadShared => sys::NQ_EVICT_HEAD_SHARED,
            EvictMode::Paged => sys::NQ_EVICT_PAGED,
        }
    }
    pub fn from_raw(raw: sys::nq_evict_mode) -> Option<EvictMode> {
        match raw {
            sys::NQ_EVICT_PER_HEAD => Some(EvictMode::PerHead),
            sys::NQ_EVICT_HEAD_SHARED => Some(EvictMode::HeadShared),
            sys::NQ_EVICT_PAGED => Some(EvictMode::Paged),
            _ => None,
        }
    }
}

/// How RoPE relates to the keys passed in and wanted back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeMode {
    None,
    Remove,
    Keep,
}

impl RopeMode {
    pub fn raw(self) -> sys::nq_rope_mode {
        match self {
            RopeMode::None => sys::NQ_ROPE_NONE,
            RopeMode::Remove => sys::NQ_ROPE_REMOVE,
            RopeMode::Keep => sys::NQ_ROPE_KEEP,
        }
    }
    pub fn from_raw(raw: sys::nq_rope_mode) -> Option<RopeMode> {
        match raw {
            sys::NQ_ROPE_NONE => Some(RopeMode::None),
            sys::NQ_ROPE_REMOVE => Some(RopeMode::Remove),
            sys::NQ_ROPE_KEEP => Some(RopeMode::Keep),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopePairing {
    /// (i, i + rotary_dims/2): Llama, Mistral, Qwen, NeoX.
    SplitHalf,
    /// (2i, 2i + 1): GPT-J style.
    Interleaved,
}

/// RoPE scaling, with Hugging Face's `rope_scaling` meanings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f64 },
    DynamicNtk { factor: f64, original_max_position: u32 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: u32 },
    /// `attention_factor` 0 means 0.1 ln(factor) + 1.
    Yarn { factor: f64, beta_fast: f64, beta_slow: f64, attention_factor: f64, original_max_position: u32 },
}

/// RoPE as the model applies it to keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub mode: RopeMode,
    pub pairing: RopePairing,
    /// Rotated leading dims (partial rotary); 0 = head_dim.
    pub rotary_dims: u32,
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Default for Rope {
    fn default() -> Rope {
        Rope { mode: RopeMode::Remove, pairing: RopePairing::SplitHalf, rotary_dims: 0, theta: 10000.0, scaling: RopeScaling::None }
    }
}

/// Bits and eviction for layers `[layer_begin, layer_end)`; `None` keeps the context's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerOverride {
    pub layer_begin: u32,
    pub layer_end: u32,
    pub k_bits: Option<u32>,
    pub v_bits: Option<u32>,
    pub evict_fraction: Option<f32>,
}

/// A context's configuration. Starts from the library's defaults (`nq_config_init`);
/// every setter returns the config so calls chain:
///
/// ```no_run
/// use nexusquant::{Config, Preset};
/// let cfg = Config::new(128, 8).num_q_heads(32).preset(Preset::Balanced);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    raw: sys::nq_config,
    overrides: Vec<sys::nq_layer_override>,
}

impl Config {
    /// Defaults for `num_kv_heads` heads of `head_dim` (preset LOSSLESS, RoPE removed
    /// with theta 10000, split-half pairing).
    pub fn new(head_dim: u32, num_kv_heads: u32) -> Config {
        // SAFETY: nq_config is plain data; nq_config_init fills every field.
        let mut raw: sys::nq_config = unsafe { core::mem::zeroed() };
        unsafe { sys::nq_config_init(&mut raw) };
        raw.head_dim = head_dim;
        raw.num_kv_heads = num_kv_heads;
        Config { raw, overrides: Vec::new() }
    }

    pub fn num_q_heads(mut self, n: u32) -> Config {
        self.raw.num_q_heads = n;
        self
    }
    pub fn num_layers(mut self, n: u32) -> Config {
        self.raw.num_layers = n;
        self
    }
    pub fn preset(mut self, p: Preset) -> Config {
        self.raw.preset = p.raw();
        self
    }
    pub fn codec(mut self, c: Codec) -> Config {
        self.raw.codec = c.raw();
        self
    }
    /// Key bits, 1..8.
    pub fn k_bits(mut self, bits: u32) -> Config {
        self.raw.k_bits = bits;
        self
    }
    /// Value bits, 1..8.
    pub fn v_bits(mut self, bits: u32) -> Config {
        self.raw.v_bits = bits;
        self
    }
    /// Fraction of the tokens to evict, in [0, 1).
    pub fn evict_fraction(mut self, f: f32) -> Config {
        self.raw.evict_fraction = f;
        self
    }
    /// Choose bits and eviction for this compression ratio (overrides the preset).
    pub fn target_ratio(mut self, r: f32) -> Config {
        self.raw.target_ratio = r;
        self
    }
    pub fn evict_mode(mut self, m: EvictMode) -> Config {
        self.raw.evict_mode = m.raw();
        self
    }
    pub fn evict_page_size(mut self, tokens: u32) -> Config {
        self.raw.evict_page_size = tokens;
        self
    }
    pub fn sink_tokens(mut self, n: u32) -> Config {
        self.raw.sink_tokens = n.min(i32::MAX as u32) as i32;
        self
    }
    pub fn recent_window(mut self, n: u32) -> Config {
        self.raw.recent_window = n.min(i32::MAX as u32) as i32;
        self
    }
    /// Leading tokens stored as fp16.
    pub fn fp16_sinks(mut self, n: u32) -> Config {
        self.raw.fp16_sinks = n.min(i32::MAX as u32) as i32;
        self
    }
    /// Trailing tokens of a block stored as fp16.
    pub fn fp16_window(mut self, n: u32) -> Config {
        self.raw.fp16_window = n.min(i32::MAX as u32) as i32;
        self
    }
    pub fn rope(mut self, rope: Rope) -> Config {
        let r = &mut self.raw.rope;
        r.mode = rope.mode.raw();
        r.pairing = match rope.pairing {
            RopePairing::SplitHalf => sys::NQ_ROPE_SPLIT_HALF,
            RopePairing::Interleaved => sys::NQ_ROPE_INTERLEAVED,
        };
        r.rotary_dims = rope.rotary_dims;
        r.theta = rope.theta;
        match rope.scaling {
            RopeScaling::None => r.scaling = sys::NQ_ROPE_SCALING_NONE,
            RopeScaling::Linear { factor } => {
                r.scaling = sys::NQ_ROPE_SCALING_LINEAR;
                r.factor = factor;
            }
            RopeScaling::DynamicNtk { factor, original_max_position } => {
                r.scaling = sys::NQ_ROPE_SCALING_DYNAMIC_NTK;
                r.factor = factor;
                r.original_max_position = original_max_position;
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                r.scaling = sys::NQ_ROPE_SCALING_LLAMA3;
                r.factor = factor;
                r.low_freq_factor = low_freq_factor;
                r.high_freq_factor = high_freq_factor;
                r.original_max_position = original_max_position;
            }
            RopeScaling::Yarn { factor, beta_fast, beta_slow, attention_factor, original_max_position } => {
                r.scaling = sys::NQ_ROPE_SCALING_YARN;
                r.factor = factor;
                r.beta_fast = beta_fast;
                r.beta_slow = beta_slow;
                r.attention_factor = attention_factor;
                r.original_max_position = original_max_position;
            }
        }
        self
    }
    /// CPU threads the context may use (0 = none started).
    pub fn num_threads(mut self, n: u32) -> Config {
        self.raw.num_threads = n;
        self
    }
    /// zstd level of the archive form (`None`: no zstd).
    pub fn archive_zstd_level(mut self, level: Option<i32>) -> Config {
        self.raw.archive_zstd_level = level.unwrap_or(-1);
        self
    }
    /// Code keys minus their per-(block, head) mean (docs/FORMAT.md 1.8); on by default
    /// (the library's default); `false` codes them as they are.
    pub fn key_centering(mut self, on: bool) -> Config {
        self.raw.key_centering = on as u32;
        self
    }
    pub fn layer_override(mut self, o: LayerOverride) -> Config {
        self.overrides.push(sys::nq_layer_override {
            layer_begin: o.layer_begin,
            layer_end: o.layer_end,
            k_bits: o.k_bits.unwrap_or(0),
            v_bits: o.v_bits.unwrap_or(0),
            evict_fraction: o.evict_fraction.unwrap_or(-1.0),
            reserved0: 0,
        });
        self
    }

    /// The raw struct as it will be passed (without the override pointer).
    pub fn raw(&self) -> &sys::nq_config {
        &self.raw
    }

    /// The struct to pass to `nq_context_create`, pointing into `self.overrides`.
    pub(crate) fn to_raw(&self) -> sys::nq_config {
        let mut raw = self.raw;
        raw.overrides = if self.overrides.is_empty() { core::ptr::null() } else { self.overrides.as_ptr() };
        raw.num_overrides = self.overrides.len() as u32;
        raw
    }
}

#include "presets.h"

#include <cctype>
#include <cstring>

#include "../api/error.h"
#include "../api/fp_env.h"

namespace nq {
namespace {

// Bytes of one token of one head under (kb, vb), with a u32 position when evicting.
double token_bytes(uint32_t head_dim, uint32_t kb, uint32_t vb, bool evicting) {
    return head_dim * (kb + vb) / 8.0 + 4.0 /* two bf16 scales */ + (evicting ? 4.0 : 0.0);
}

// Distortion targets of the quality presets (relative attention-output MSE over the
// engine's last queries, src/plan/bit_choice.h).
constexpr float kLosslessTarget = 1e-3f;
constexpr float kHighTarget = 2e-3f;
constexpr float kBalancedTarget = 3e-3f;
constexpr float kMaxTarget = 6e-3f;

}  // namespace

PresetValues plan_for_ratio(float ratio, uint32_t head_dim) {
    DefaultFpEnv env;  // the plan (a stored eviction fraction) may not depend on the caller's rounding mode
    // Precision ladder, best first; keys get the extra bit (they carry the outliers).
    static const uint32_t ladder[][2] = {{8, 8}, {6, 6}, {5, 5}, {5, 4}, {4, 4}, {4, 3}, {3, 3}, {3, 2}, {2, 2}};
    const double fp16 = head_dim * 4.0;  // K + V, 2 bytes each
    PresetValues v{3, 2, 0.0f, 4, 32, 4, 32};
    if (ratio <= 0.0f) return v;
    for (auto &l : ladder) {
        if (fp16 / token_bytes(head_dim, l[0], l[1], false) >= ratio) {
            v.k_bits = l[0];
            v.v_bits = l[1];
            return v;  // the most precise pair that reaches the ratio without eviction
        }
    }
    // Eviction needed: K3/V2 up to 12x, K2/V2 beyond.
    v.k_bits = ratio <= 12.0f ? 3 : 2;
    v.v_bits = 2;
    double q = fp16 / token_bytes(head_dim, v.k_bits, v.v_bits, true);
    double f = 1.0 - q / ratio;
    if (f < 0.0) f = 0.0;
    if (f > 0.95) f = 0.95;
    v.evict_fraction = (float)f;
    return v;
}

BitPolicy bit_policy(const nq_config &c) {
    BitPolicy b{false, 0, 0.0f, 0.0f};
    if (c.k_bits != 0 || c.v_bits != 0) return b;
    // A target ratio (and S/M/L/XL, planned from one) is a byte budget its planned pair
    // already spends: the choice never goes below nominal, so nothing is left to choose.
    if (c.target_ratio > 0.0f) return b;
    switch (c.preset) {
    // A distortion target (relative attention-output MSE, bit_choice.h) with a ratio
    // floor: below the target a block saves bits; above it, it spends up to one more
    // bit as long as the block keeps the floor (the ratios the presets promise).
    case NQ_PRESET_LOSSLESS: return {true, 1, kLosslessTarget, 5.0f};
    case NQ_PRESET_HIGH: return {true, 1, kHighTarget, 8.0f};
    case NQ_PRESET_BALANCED: return {true, 1, kBalancedTarget, 12.0f};
    case NQ_PRESET_MAX: return {true, 1, kMaxTarget, 25.0f};
    default: return b;
    }
}

PresetValues preset_values(nq_preset p, uint32_t head_dim) {
    switch (p) {
    case NQ_PRESET_LOSSLESS: return {3, 2, 0.0f, 4, 32, 4, 32};
    case NQ_PRESET_HIGH: return {3, 2, 0.42f, 4, 32, 4, 32};
    case NQ_PRESET_BALANCED: return {3, 2, 0.64f, 4, 32, 4, 32};
    case NQ_PRESET_MAX: return {2, 2, 0.78f, 4, 32, 4, 32};
    case NQ_PRESET_S: return plan_for_ratio(5.0f, head_dim);
    case NQ_PRESET_M: return plan_for_ratio(10.0f, head_dim);
    case NQ_PRESET_L: return plan_for_ratio(17.0f, head_dim);
    case NQ_PRESET_XL: return plan_for_ratio(33.0f, head_dim);
    case NQ_PRESET_CUSTOM:
    default: return {3, 2, 0.0f, 4, 32, 4, 32};
    }
}

}  // namespace nq

namespace {
struct PresetName {
    const char *name;
    nq_preset preset;
};
const PresetName kNames[] = {
    {"custom", NQ_PRESET_CUSTOM}, {"lossless", NQ_PRESET_LOSSLESS}, {"high", NQ_PRESET_HIGH},
    {"conservative", NQ_PRESET_HIGH}, {"balanced", NQ_PRESET_BALANCED}, {"max", NQ_PRESET_MAX},
    {"aggressive", NQ_PRESET_MAX}, {"s", NQ_PRESET_S}, {"m", NQ_PRESET_M}, {"l", NQ_PRESET_L}, {"xl", NQ_PRESET_XL},
};
}  // namespace

extern "C" NQ_API nq_status nq_preset_from_name(const char *name, nq_preset *out) {
    if (!name) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "name is NULL");
    if (!out) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "out is NULL");
    char low[32];
    size_t n = std::strlen(name);
    if (n >= sizeof low) return nq::fail(NQ_ERR_INVALID_ARGUMENT, "unknown preset '%.40s'", name);
    for (size_t i = 0; i <= n; ++i) low[i] = (char)std::tolower((unsigned char)name[i]);
    for (const auto &p : kNames)
        if (std::strcmp(p.name, low) == 0) {
            *out = p.preset;
            return NQ_OK;
        }
    return nq::fail(NQ_ERR_INVALID_ARGUMENT,
                    "unknown preset '%s' (lossless, high, conservative, balanced, max, aggressive, S, M, L, XL, custom)",
                    name);
}

extern "C" NQ_API const char *nq_preset_name(nq_preset p) {
    switch (p) {
    case NQ_PRESET_CUSTOM: return "custom";
    case NQ_PRESET_LOSSLESS: return "lossless";
    case NQ_PRESET_HIGH: return "high";
    case NQ_PRESET_BALANCED: return "balanced";
    case NQ_PRESET_MAX: return "max";
    case NQ_PRESET_S: return "S";
    case NQ_PRESET_M: return "M";
    case NQ_PRESET_L: return "L";
    case NQ_PRESET_XL: return "XL";
    }
    return "unknown";
}

"""Per-model tuning of the presets: per-layer bits and fp16 window measured on one model.

A preset's bits are generic; which layers of a model are hurt most by them is not. A
profile names the layers of one model that get more bits under a preset (and the fp16
window that pays for them), chosen from nq-eval measurements recorded in BENCHMARKS.md.

A profile applies only when both the model's shape and its name match, so another model
of the same shape keeps the generic preset. Settings passed explicitly to a `Context`,
`NexusQuantCache` or nq-eval scheme win over the profile.

    python -m nexusquant.profiles     # prints every profile as Context settings

C, Rust and Go users pass the same values as `nq_layer_override`s and `fp16_window`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass(frozen=True)
class ModelProfile:
    name: str
    # num_layers, num_q_heads, num_kv_heads, head_dim
    shape: Dict[str, int]
    # any of these, after lower-casing and dropping everything but letters and digits,
    # must occur in the model's name (GGUF general.name, file name, HF name_or_path)
    name_keys: tuple
    # preset -> Context settings replacing the preset's defaults
    presets: Dict[str, dict] = field(default_factory=dict)
    evidence: str = ""

    def fits(self, shape: Dict[str, int]) -> bool:
        return all(shape.get(k) == v for k, v in self.shape.items())

    def matches(self, shape: Dict[str, int], model_name: str) -> bool:
        key = _normalise(model_name)
        return self.fits(shape) and any(k in key for k in self.name_keys)

    def settings_for(self, preset: str) -> dict:
        """Context settings this profile gives `preset` ({} for a preset it does not tune)."""
        return dict(self.presets.get(_ALIASES.get(preset, preset), {}))


def _normalise(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", (s or "").lower())


def _layers(*ranges, k_bits: int, v_bits: int) -> list:
    return [{"layers": (a, b), "k_bits": k_bits, "v_bits": v_bits} for a, b in ranges]


PROFILES = (
    ModelProfile(
        name="smollm2-135m",
        shape={"num_layers": 30, "num_q_heads": 9, "num_kv_heads": 3, "head_dim": 64},
        name_keys=("smollm2135m",),
        presets={
            # lossless: layers 1, 2, 7, 8, 14, 17, 18, 20, 23, 24 at K4/V3 instead of K3/V2,
            # no fp16 window (the preset keeps 32 tokens): 5.1x at 1024 and 2048 tokens. The
            # ten layers moved next-token KL most when raised alone to K8/V8 (per-layer probe,
            # 1024-token contexts, both texts); between the top 5 and top 10, with window 8
            # or 0, the choice was made on 2048-token runs of 4 windows (BENCHMARKS.md).
            "lossless": {"fp16_window": 0,
                         "overrides": _layers((1, 3), (7, 9), (14, 15), (17, 19), (20, 21), (23, 25),
                                              k_bits=4, v_bits=3)},
        },
        evidence="BENCHMARKS.md, 'Tuning': per-layer probe and the 1024/2048-token tables",
    ),
)

# preset aliases resolve to the profile entry of their canonical name
_ALIASES = {"conservative": "high", "aggressive": "max"}


def find_profile(shape: Dict[str, int], model_name: str) -> Optional[ModelProfile]:
    """The profile for a model of this shape and name, or None."""
    for p in PROFILES:
        if p.matches(shape, model_name):
            return p
    return None


def _named_profile(name: str, shape: Dict[str, int]) -> ModelProfile:
    p = next((q for q in PROFILES if q.name == name), None)
    if p is None:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(q.name for q in PROFILES)}")
    if not p.fits(shape):
        raise ValueError(f"profile {name!r} is for shape {p.shape}, the model has {shape}")
    return p


# Explicit settings that change what the profile was tuned against: with any of them the
# profile is not applied (its overrides assume the preset's own bits).
_RETUNED = ("k_bits", "v_bits", "overrides", "target_ratio", "codec")


def merge(preset: str, shape: Dict[str, int], model_name: str, profile, explicit: dict) -> dict:
    """Settings for a Context: the profile's for `preset` (profile="auto": the matching
    one; a name: that profile, whose shape must match; None: none), then `explicit`
    settings that are not None on top. A profile is skipped when `explicit` sets bits,
    overrides, a target ratio or a codec (see _RETUNED)."""
    retuned = any(explicit.get(k) not in (None, 0, 0.0, "e8", [], ()) for k in _RETUNED)
    chosen = None
    if not retuned and profile == "auto":
        chosen = find_profile(shape, model_name)
    elif not retuned and profile is not None:
        chosen = _named_profile(profile, shape)
    base = chosen.settings_for(preset) if chosen is not None else {}
    base.update({k: v for k, v in explicit.items() if v is not None})
    return base


def _main() -> None:
    for p in PROFILES:
        print(f"{p.name}: shape {p.shape}, names containing {p.name_keys}")
        for preset, s in p.presets.items():
            print(f"  {preset}: {s}")
        print(f"  evidence: {p.evidence}")


if __name__ == "__main__":
    _main()

"""Per-token comparison of a scheme's logits with the uncompressed reference."""

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # float64: KL between nearly identical distributions (fp16, q8_0) is
    # ~1e-6, below float32's cancellation noise on 49k-way sums.
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_stats(ref_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> dict:
    """Sums over the M positions (so samples can be pooled): NLL of the
    targets under the scheme, KL(ref || scheme), top-1 agreement with ref."""
    lr, ls = log_softmax(ref_logits), log_softmax(logits)
    idx = np.arange(len(targets))
    nll = -ls[idx, targets]
    kl = (np.exp(lr) * (lr - ls)).sum(axis=-1)
    top1 = ref_logits.argmax(axis=-1) == logits.argmax(axis=-1)
    return {"nll_sum": float(nll.sum()), "kl_sum": float(np.maximum(kl, 0.0).sum()),
            "top1_sum": int(top1.sum()), "n": int(len(targets))}

"""Clear errors when a variant is asked for a mask feature (or a call option) it cannot compute,
and the log line naming the kernel a call got."""

import logging
from collections.abc import Callable, Iterable

from llmjax.attention.masks import Mask

# feature name -> (what it means, whether the call uses it)
MASK_FEATURES: dict[str, tuple[str, Callable[[Mask, object], bool]]] = {
    "window": ("a sliding window (mask.window)", lambda m, s: m.window is not None),
    "segments": (
        "packed segments (mask.q_segments/kv_segments)",
        lambda m, s: m.q_segments is not None and m.kv_segments is not None,
    ),
    "parents": (
        "a packed tree of prefixes and continuations (mask.q_parents)",
        lambda m, s: m.q_parents is not None,
    ),
    "kv_valid": ("padded or unwritten keys (mask.kv_valid)", lambda m, s: m.kv_valid is not None),
    "extra": ("a dense extra mask (mask.extra)", lambda m, s: m.extra is not None),
    "alibi": ("ALiBi slopes (alibi_slopes)", lambda m, s: s is not None),
    "non_causal": ("a non-causal mask (mask.causal=False)", lambda m, s: not m.causal),
}

# Keyword options of a call beyond the mask: feature name -> what it means.
OPTION_FEATURES: dict[str, str] = {
    "softcap": "an attention-logit soft cap (logit_softcap, model.attn_logit_softcap)",
}

EVERY_MASK = "'reference', 'xla' and 'flash' serve every mask"


class UnsupportedMask(ValueError):
    """An attention variant cannot compute the requested mask feature."""


def reject(
    variant: str,
    mask: Mask,
    alibi_slopes,
    features: Iterable[str],
    hint: str = "",
    *,
    logit_softcap: float | None = None,
) -> None:
    """Raises UnsupportedMask naming the variant and the first requested feature it lacks
    (names of MASK_FEATURES or OPTION_FEATURES)."""
    for name in features:
        if name in OPTION_FEATURES:
            meaning, used = OPTION_FEATURES[name], logit_softcap is not None
        else:
            meaning, uses = MASK_FEATURES[name]
            used = uses(mask, alibi_slopes)
        if used:
            raise UnsupportedMask(
                f"attention variant {variant!r} cannot serve {meaning}; "
                f"{hint + '; ' if hint else ''}{EVERY_MASK}"
            )


def check_block(variant: str, name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{variant} attention: {name} must be a positive integer, got {value!r}")
    return value


def check_self_attention(variant: str, q_len: int, kv_len: int) -> None:
    if q_len != kv_len:
        raise UnsupportedMask(
            f"attention variant {variant!r} needs queries and keys of the same length "
            f"(self-attention over one sequence), got {q_len} queries and {kv_len} keys; "
            f"{EVERY_MASK}"
        )


log = logging.getLogger("llmjax.attention")
_REPORTED: set[tuple] = set()


def report(kernel: str, why: str, q_BxTxNxH, k_BxSxKxH) -> None:
    """Logs (INFO, logger `llmjax.attention`) the kernel an attention call got and why, once
    per kernel, reason and shape. Calls are traced once per compile, and every layer of a
    scanned stack shares its one trace, so a model logs a handful of lines."""
    key = (kernel, why, q_BxTxNxH.shape, k_BxSxKxH.shape, str(q_BxTxNxH.dtype))
    if key not in _REPORTED:
        _REPORTED.add(key)
        log.info("attention: %s for q %s, k %s, %s (%s)", kernel, q_BxTxNxH.shape,
                 k_BxSxKxH.shape, q_BxTxNxH.dtype, why)  # fmt: skip


def declined(kernel: str, why: str, q_BxTxNxH, k_BxSxKxH) -> None:
    """Reports that a fused kernel does not serve a call (and why), and returns None."""
    report("fallback", f"{kernel} does not apply: {why}", q_BxTxNxH, k_BxSxKxH)

"""Attention metrics on captured matrices, each with a *metric card* (definition, paper, defaults).

Every metric takes attention probabilities ``probs (B, h, N_q, N_k)`` (rows sum to one over keys,
as recorded by :func:`attnzoo.capture`) and an optional padding mask ``mask (B, N)`` (bool, True =
real token; queries and keys share it for self-attention). Padded query rows are left out of
every average and padded keys receive no attention share. Head-level metrics return ``(B, h)``
(averaged over real queries), token-level metrics ``(B, h, N)``; positions a metric does not
define (padding, or the last token for FAI) are NaN, and reductions use ``nanmean``.

The registry :data:`METRICS` holds one frozen :class:`MetricCard` per metric, so reports can
print what each number means and where it comes from (``metric_card("waad")``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from attnzoo.checks import check_tensor

__all__ = [
    "METRICS",
    "MetricCard",
    "attention_entropy",
    "attention_received",
    "future_attention_influence",
    "head_redundancy",
    "head_similarity",
    "mean_attention_distance",
    "metric_card",
    "register_metric",
    "sink_mass",
    "sink_rate",
    "top_sinks",
    "windowed_average_attention_distance",
]


@dataclass(frozen=True)
class MetricCard:
    """What an analysis metric computes and where its definition comes from.

    Attributes:
        name: registry name.
        summary: one line.
        definition: the equation computed, in plain text.
        paper: the paper the definition and defaults are taken from.
        arxiv: its arXiv id.
        defaults: the paper's default parameters, as used by attnzoo.
        output: result shape.
        fn: the function computing it.
        notes: where attnzoo's reading of the paper needed a choice.
    """

    name: str
    summary: str
    definition: str
    paper: str
    arxiv: str | None
    output: str
    fn: Callable[..., Any]
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()


_REGISTRY: dict[str, MetricCard] = {}
METRICS = MappingProxyType(_REGISTRY)


def register_metric(card: MetricCard) -> MetricCard:
    """Add ``card`` to :data:`METRICS` (``ValueError`` if the name is taken)."""
    if card.name in _REGISTRY:
        raise ValueError(f"metric {card.name!r} is already registered")
    _REGISTRY[card.name] = card
    return card


def _card(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        defaults = MappingProxyType(dict(kwargs.pop("defaults", {})))
        register_metric(MetricCard(fn=fn, defaults=defaults, **kwargs))
        return fn

    return deco


def metric_card(name: str) -> MetricCard:
    """The card of metric ``name`` (``KeyError`` listing the known names otherwise)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _check(probs: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate; return probs with padded keys zeroed and the query validity ``(B, 1, N_q)``."""
    check_tensor(probs, "probs", ndim=4, finite=False)
    b, _, n_q, n_k = probs.shape
    if mask is None:
        return probs, torch.ones(b, 1, n_q, dtype=torch.bool, device=probs.device)
    check_tensor(mask, "mask", ndim=2, floating=False, finite=False)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real token), got dtype {mask.dtype}")
    if mask.shape[0] != b or mask.shape[1] not in (n_q, n_k) or n_q != n_k:
        raise ValueError(
            f"mask must have shape (B, N) = ({b}, {n_k}) for self-attention probs {tuple(probs.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    keys = mask[:, None, None, :]
    return probs.masked_fill(~keys, 0.0), mask[:, None, :]


def _mean_over_queries(per_query: torch.Tensor, valid_q: torch.Tensor) -> torch.Tensor:
    """``(B, h, N_q)`` -> ``(B, h)`` mean over real queries."""
    w = valid_q.to(per_query.dtype).expand_as(per_query)
    return (per_query.nan_to_num() * w).sum(-1) / w.sum(-1).clamp_min(1)


@_card(
    name="entropy",
    summary="Shannon entropy of each query's attention distribution (nats), mean over queries.",
    definition="H_i = -sum_j p_ij log p_ij; head value = mean over real queries i",
    paper="Attention entropy as used for head analysis, e.g. Clark et al., What Does BERT Look At? (2019)",
    arxiv="1906.04341",
    output="(B, h)",
    notes=("Natural log; uniform attention over n keys gives log n, one-hot attention 0.",),
)
def attention_entropy(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention entropy per head (nats): ``(B, h, N, N) -> (B, h)``."""
    probs, valid_q = _check(probs, mask)
    plogp = torch.where(probs > 0, probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), 0.0)
    return _mean_over_queries(-plogp.sum(-1), valid_q)


@_card(
    name="mean_attention_distance",
    summary="ViT mean attention distance: attention-weighted spatial distance between patches.",
    definition="D_i = sum_j p_ij * ||pos_i - pos_j||_2 * patch_size over patch tokens i, j; "
    "head value = mean_i D_i",
    paper="Dosovitskiy et al., An Image is Worth 16x16 Words (ViT), Fig. 7 / App. D.7",
    arxiv="2010.11929",
    output="(B, h)",
    defaults={"num_prefix_tokens": 1, "patch_size": 1},
    notes=(
        "Prefix tokens (class/register tokens) are dropped as queries and keys; weights are not "
        "renormalised, so attention to a prefix token adds no distance (renormalize=True rescales).",
        "patch_size=1 gives distances in patches; pass the model's patch size for pixels as in the paper.",
    ),
)
def mean_attention_distance(
    probs: torch.Tensor,
    grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 1,
    patch_size: float = 1.0,
    renormalize: bool = False,
) -> torch.Tensor:
    """Mean attention distance per head, ``(B, h, P+HW, P+HW) -> (B, h)``, for a ``grid=(H, W)``
    of patches after ``num_prefix_tokens`` prefix tokens."""
    check_tensor(probs, "probs", ndim=4, finite=False)
    hh, ww = grid
    n = probs.shape[-1]
    if probs.shape[-2] != n or n != num_prefix_tokens + hh * ww:
        raise ValueError(
            f"probs {tuple(probs.shape)} does not hold num_prefix_tokens={num_prefix_tokens} + "
            f"H*W={hh}*{ww} tokens"
        )
    p = probs[..., num_prefix_tokens:, num_prefix_tokens:]
    if renormalize:
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    ys, xs = torch.meshgrid(
        torch.arange(hh, device=p.device), torch.arange(ww, device=p.device), indexing="ij"
    )
    pos = torch.stack([ys.flatten(), xs.flatten()], -1).to(p.dtype)
    dist = torch.cdist(pos, pos) * patch_size
    return (p * dist).sum(-1).mean(-1)


@_card(
    name="attention_received",
    summary="Share of attention each key position receives (column mean over real queries).",
    definition="s_j = mean_{real i} p_ij",
    paper="Xiao et al., Efficient Streaming Language Models with Attention Sinks (2023)",
    arxiv="2309.17453",
    output="(B, h, N_k)",
)
def attention_received(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average attention each key receives, ``(B, h, N_q, N_k) -> (B, h, N_k)``; sums to 1 over keys."""
    probs, valid_q = _check(probs, mask)
    w = valid_q.to(probs.dtype).unsqueeze(-1)
    return (probs * w).sum(-2) / w.sum(-2).clamp_min(1)


def _sink_selector(sinks: torch.Tensor | Sequence[int], b: int, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(sinks, torch.Tensor):
        if sinks.dtype != torch.bool or tuple(sinks.shape) != (b, n):
            raise ValueError(
                f"sinks as a tensor must be bool of shape {(b, n)}, got {sinks.dtype} {tuple(sinks.shape)}"
            )
        return sinks
    sel = torch.zeros(b, n, dtype=torch.bool, device=device)
    idx = list(sinks)
    if any(not -n <= i < n for i in idx):
        raise ValueError(f"sink positions {idx} out of range for {n} tokens")
    sel[:, idx] = True
    return sel


@_card(
    name="sink_mass",
    summary="Share of attention that goes to chosen sink tokens (default the first token), per head.",
    definition="m = mean_{real i} sum_{j in S} p_ij for a sink set S (positions or a per-sequence bool mask)",
    paper="Xiao et al., Efficient Streaming Language Models with Attention Sinks (2023); "
    "Clark et al., What Does BERT Look At? (2019) for [CLS]/[SEP]",
    arxiv="2309.17453",
    output="(B, h)",
    defaults={"sinks": (0,)},
    notes=("All mass on token 0 gives sink mass 1; uniform attention over n keys gives |S|/n.",),
)
def sink_mass(
    probs: torch.Tensor,
    sinks: torch.Tensor | Sequence[int] = (0,),
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention share on the sink tokens per head, ``(B, h, N, N) -> (B, h)``.

    Args:
        sinks: key positions, or a ``(B, N)`` bool tensor marking the sink tokens of each sequence
            (e.g. each sequence's ``[SEP]``, whose position depends on its length).
    """
    received = attention_received(probs, mask)
    sel = _sink_selector(sinks, probs.shape[0], probs.shape[-1], probs.device)
    return (received * sel[:, None, :].to(received.dtype)).sum(-1)


@_card(
    name="sink_rate",
    summary="Fraction of heads whose first-token attention share exceeds a threshold.",
    definition="rate = mean_heads 1[ mean_{real i} p_i,0 > eps ]",
    paper="Gu et al., When Attention Sink Emerges in Language Models: An Empirical View (2024)",
    arxiv="2410.10781",
    output="(B,)",
    defaults={"threshold": 0.3, "sinks": (0,)},
)
def sink_rate(
    probs: torch.Tensor,
    threshold: float = 0.3,
    sinks: torch.Tensor | Sequence[int] = (0,),
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of heads with sink mass above ``threshold``: ``(B, h, N, N) -> (B,)``."""
    return (sink_mass(probs, sinks, mask) > threshold).to(probs.dtype).mean(-1)


def top_sinks(
    probs: torch.Tensor, k: int = 3, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` key positions receiving most attention per sequence, averaged over heads.

    Returns ``(positions (B, k), shares (B, k))``.
    """
    received = attention_received(probs, mask).mean(1)
    k = min(k, received.shape[-1])
    shares, positions = received.topk(k, dim=-1)
    return positions, shares


_PREPLAN_AND_ANCHOR = (
    "Li et al., Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables "
    "Fine-Grained Policy Optimization (2025)"
)


@_card(
    name="waad",
    summary="Windowed Average Attention Distance: backward attention distance clipped at a window W.",
    definition="WAAD_t = sum_s A_{t,s} * min(|t - s|, W)",
    paper=_PREPLAN_AND_ANCHOR,
    arxiv="2510.13554",
    output="(B, h, N)",
    defaults={"window": 10},
    notes=(
        "Defined on causal attention, where only s <= t carry weight; attnzoo uses |t - s| so the "
        "same formula also measures bidirectional maps (identical on causal ones).",
        "The paper reads WAAD off locally focused heads (averaged); pick heads, then average.",
        "The window default W=10 is taken from attnzoo's reading of the paper; it could not be "
        "re-checked offline against the text, so pass window= to match another setting.",
    ),
)
def windowed_average_attention_distance(
    probs: torch.Tensor, window: int = 10, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """WAAD per query token, ``(B, h, N, N) -> (B, h, N)``; padded queries are NaN."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    probs, valid_q = _check(probs, mask)
    n_q, n_k = probs.shape[-2:]
    t = torch.arange(n_q, device=probs.device).unsqueeze(1) + (n_k - n_q)
    s = torch.arange(n_k, device=probs.device).unsqueeze(0)
    dist = (t - s).abs().clamp_max(window).to(probs.dtype)
    out = (probs * dist).sum(-1)
    return out.masked_fill(~valid_q, float("nan"))


@_card(
    name="fai",
    summary="Future Attention Influence: mean attention a token receives from the tokens after it.",
    definition="FAI_s = (1 / |{t > s}|) * sum_{t > s, real} A_{t,s}",
    paper=_PREPLAN_AND_ANCHOR,
    arxiv="2510.13554",
    output="(B, h, N)",
    defaults={"min_offset": 1},
    notes=(
        "Subsequent tokens are t >= s + min_offset (default 1, strictly later); the last token has no "
        "future and gets NaN.",
        "The paper reads FAI off globally focused heads (averaged); pick heads, then average.",
    ),
)
def future_attention_influence(
    probs: torch.Tensor, min_offset: int = 1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """FAI per key token, ``(B, h, N, N) -> (B, h, N)``; undefined positions are NaN."""
    if min_offset < 1:
        raise ValueError(f"min_offset must be >= 1, got {min_offset}")
    probs, valid_q = _check(probs, mask)
    n = probs.shape[-1]
    if probs.shape[-2] != n:
        raise ValueError(f"FAI needs square self-attention probs, got {tuple(probs.shape)}")
    t = torch.arange(n, device=probs.device).unsqueeze(1)
    s = torch.arange(n, device=probs.device).unsqueeze(0)
    later = (t >= s + min_offset).unsqueeze(0).unsqueeze(0) & valid_q.unsqueeze(-1)
    w = later.to(probs.dtype)
    count = w.sum(-2)
    out = (probs * w).sum(-2) / count.clamp_min(1)
    undefined = count == 0
    if mask is not None:
        undefined = undefined | ~mask[:, None, :]
    return out.masked_fill(undefined, float("nan"))


def _js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (base 2, in [0, 1]) over the last axis."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ratio = a.clamp_min(torch.finfo(a.dtype).tiny) / b.clamp_min(torch.finfo(b.dtype).tiny)
        return torch.where(a > 0, a * ratio.log2(), 0.0).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


@_card(
    name="head_similarity",
    summary="Pairwise distance between heads' attention maps: mean Jensen-Shannon divergence over queries.",
    definition="D(h, g) = mean_{b, real i} JS(p^h_{b,i,:} || p^g_{b,i,:}), base 2 "
    "(0 = same map, 1 = disjoint)",
    paper="Clark et al., What Does BERT Look At? An Analysis of BERT's Attention (2019), Sec. 6",
    arxiv="1906.04341",
    output="(H, H) over all heads given",
    notes=("Clark et al. sum JS over tokens; attnzoo averages so values stay in [0, 1].",),
)
def head_similarity(
    probs: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """JS-divergence matrix between all heads of the given layers (heads ordered layer by layer).

    Args:
        probs: one ``(B, h, N, N)`` tensor or a sequence of them (one per layer, same B and N).
    """
    layers = [probs] if isinstance(probs, torch.Tensor) else list(probs)
    if not layers:
        raise ValueError("probs is empty: pass at least one (B, h, N, N) tensor")
    checked = [_check(p, mask) for p in layers]
    valid_q = checked[0][1]
    heads = torch.cat([p for p, _ in checked], dim=1)  # (B, H, N, N)
    total = heads.shape[1]
    w = valid_q.to(heads.dtype).squeeze(1)  # (B, N)
    out = torch.zeros(total, total, dtype=heads.dtype, device=heads.device)
    for a in range(total):
        js = _js_divergence(heads[:, a : a + 1], heads)  # (B, H, N)
        out[a] = (js * w[:, None, :]).sum((0, 2)) / w.sum().clamp_min(1)
    return out


@_card(
    name="head_redundancy",
    summary="Per head: similarity (1 - JS divergence) to its most similar other head.",
    definition="R(h) = max_{g != h} (1 - D(h, g)) with D from head_similarity",
    paper="Clark et al., What Does BERT Look At? (2019), Sec. 6; Michel et al., Are Sixteen Heads "
    "Really Better than One? (2019) for redundancy of heads",
    arxiv="1906.04341",
    output="(H,)",
    notes=("1 means another head has exactly the same attention map on these inputs.",),
)
def head_redundancy(
    probs: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Redundancy of each head (ordered layer by layer): ``max_{g != h} 1 - JS(h, g)``."""
    dist = head_similarity(probs, mask)
    if dist.shape[0] < 2:
        raise ValueError("head redundancy needs at least two heads")
    sim = 1 - dist
    sim.fill_diagonal_(float("-inf"))
    return sim.max(-1).values

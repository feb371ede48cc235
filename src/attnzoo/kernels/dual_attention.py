"""Position and channel self-attention of dual-attention networks (DANet, Fu et al., CVPR 2019).

For a feature map ``x: (B, C, *S)`` with ``N = prod(S)`` positions flattened row-major:

* position attention: ``out[:, :, i] = sum_j softmax_j(<q_i, k_j>) v[:, :, j]`` with
  ``q, k: (B, d, *S)`` and ``v: (B, C_v, *S)``; NO ``1/sqrt(d)`` scaling. Positions are the tokens.
* channel attention: ``out[:, c] = sum_c' softmax_c'(s * <x_c, x_c'>) x_c'`` over the flattened
  ``(C, N)`` map; channels are the tokens. DANet's code computes ``softmax(max(E) - E)``, which is
  ``softmax(-E)`` (``sign=-1``, the most anti-correlated channels weigh most); the paper's eq. 3
  writes ``softmax(E)`` (``sign=+1``).

Both go through :func:`attnzoo.kernels.attention` (single head), so :func:`attnzoo.capture` sees
the ``(B, 1, N, N)`` / ``(B, 1, C, C)`` matrices.
"""

from __future__ import annotations

import torch

from attnzoo.kernels.attention import attention

__all__ = ["channel_attention", "position_attention"]


def position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(Q^T K) V`` over positions; ``q, k: (B, d, *S)``, ``v: (B, C_v, *S)`` -> ``(B, C_v, *S)``."""
    b, c_v = v.shape[:2]
    spatial = v.shape[2:]
    qt = q.flatten(2).transpose(1, 2).unsqueeze(1)
    kt = k.flatten(2).transpose(1, 2).unsqueeze(1)
    vt = v.flatten(2).transpose(1, 2).unsqueeze(1)
    out = attention(qt, kt, vt, scale=1.0)
    return out.squeeze(1).transpose(1, 2).reshape(b, c_v, *spatial)


def channel_attention(x: torch.Tensor, *, sign: float = -1.0) -> torch.Tensor:
    """``softmax(sign * X X^T) X`` over channels; ``x: (B, C, *S)`` -> ``(B, C, *S)``.

    ``sign`` scales the queries rather than being SDPA's ``scale``: the ONNX exporter takes the
    square root of that scale, which is NaN for a negative one."""
    tokens = x.flatten(2).unsqueeze(1)
    out = attention(tokens * float(sign), tokens, tokens, scale=1.0)
    return out.squeeze(1).reshape(x.shape)

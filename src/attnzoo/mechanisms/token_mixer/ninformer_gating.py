"""Token-mixing generated gating unit of NiNformer (Abdullah & Kalinli, "NiNformer: A Network in
Network Transformer with Token Mixing Generated Gating Function", 2024, Sec. 3).

The gate is the output of a full MLP-Mixer block run on the same input, and multiplies a linear
projection of the input elementwise::

    Y    = X + (W_t2 GELU(W_t1 LN_t(X)^T + b_t1) + b_t2)^T       (token MLP over the N tokens)
    G    = Y + W_c2 GELU(W_c1 LN_c(Y) + b_c1) + b_c2             (channel MLP)
    out  = (X W_p + b_p) * G

No softmax and no sigmoid: ``G`` is used as is. The token MLP has fixed length ``N = seq_len``.
:class:`NiNformerBlock` is the paper's pre-norm block ``x + MGU(LN(x))`` then ``x + FFN(LN(x))``
(one shared LayerNorm, as in the official code).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.checks import check_int, check_rate, check_tensor
from attnzoo.families import TokenMixer
from attnzoo.registry import Card, register

__all__ = ["NiNformerBlock", "NiNformerGating"]


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
    )


@register(
    Card(
        name="ninformer_gating",
        aliases=("mixer_gating_unit", "ninformer_mgu"),
        family="token_mixer",
        summary="A linear projection of x gated elementwise by the output of an MLP-Mixer block on x "
        "(token MLP over a fixed N, then channel MLP).",
        paper="NiNformer: A Network in Network Transformer with Token Mixing Generated Gating Function",
        arxiv="2403.02411",
        year=2024,
        official_repo="Abdullah-88/NiNformer",
        official_commit="0ec85d46a82ea9472fdd28dde0b70dc0ca62a91a",
        parity="official",
        parity_fixtures=("ninformer_gating",),
        time_complexity="O(N^2 T + N C (C + D_c))  (T = token_dim, D_c = channel_dim)",
        memory_complexity="O(N C + C T + N D_c)",
        layouts=("BNC",),
        spatial_dims=1,
        variable_size=False,
        key_padding_note="the token MLP (Linear(seq_len, token_dim)) mixes every position with learned "
        "weights per absolute position: a padded position's weight cannot be removed",
        ledger=(
            "The gate is the Mixer block output itself (both residuals included), without sigmoid, "
            "as in the official MixerGatingUnit.",
            "Fixed sequence length: the token MLP is Linear(seq_len, token_dim); other N raise "
            "ValueError (officially a matmul shape error).",
            "Parameters: official Mixer.token_mix.{0 (LN), 2.net.{0,3} (fc)}, Mixer.channel_mix.{0 (LN), "
            "1.net.{0,3}}, proj map to token_norm, token_mlp.{0,3}, channel_norm, channel_mlp.{0,3}, "
            "proj (attnzoo.official.ninformer_gating converts; NiNBlock: mgu. -> gating., ffn.net. -> ffn.).",
            "NiNformerBlock reproduces the official NiNBlock (one LayerNorm shared by both pre-norms, "
            "token_dim = channel_dim = d_ffn); the patch embedding and classifier are not included.",
        ),
        tiny={"dim": 8, "seq_len": 7, "token_dim": 12, "channel_dim": 16},
        sweep={"token_dim": (4, 12), "channel_dim": (8, 16), "size": [(7,)]},
        bench={"dim": 256, "seq_len": 196, "token_dim": 512, "channel_dim": 512, "sizes": [(196,)]},
        conformance={"sizes": [(7,)]},
    )
)
class NiNformerGating(TokenMixer):
    """Mixer gating unit on ``x (B, seq_len, C)``; returns ``(B, seq_len, C)``.

    Args:
        dim: channels C.
        seq_len: the fixed number of tokens N.
        token_dim: hidden size of the token MLP (default ``4 * seq_len``).
        channel_dim: hidden size of the channel MLP (default ``4 * dim``).
        dropout: dropout inside both MLPs (training only).
    """

    def __init__(
        self,
        dim: int,
        seq_len: int,
        token_dim: int | None = None,
        channel_dim: int | None = None,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(seq_len, "seq_len")
        token_dim = 4 * seq_len if token_dim is None else check_int(token_dim, "token_dim")
        channel_dim = 4 * dim if channel_dim is None else check_int(channel_dim, "channel_dim")
        check_rate(dropout, "dropout")
        self.dim = dim
        self.seq_len = seq_len
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = _mlp(seq_len, token_dim, dropout)
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = _mlp(dim, channel_dim, dropout)
        self.proj = nn.Linear(dim, dim)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixer-block gate ``G (B, N, C)`` of ``x``."""
        y = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return y + self.channel_mlp(self.channel_norm(y))

    def compute(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if x.shape[1] != self.seq_len:
            raise ValueError(
                f"x has {x.shape[1]} tokens but the token MLP was built for seq_len={self.seq_len}"
            )
        return self.proj(x) * self.gate(x)


class NiNformerBlock(nn.Module):
    """NiNformer block on ``x (B, seq_len, C)``: ``x + MGU(LN(x))`` then ``x + FFN(LN(x))``.

    Args:
        dim: C.
        ffn_dim: hidden size of the FFN and of both MLPs of the gating unit.
        seq_len: N.
        dropout: dropout in the MLPs (training only).
    """

    def __init__(self, dim: int, ffn_dim: int, seq_len: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gating = NiNformerGating(dim, seq_len, ffn_dim, ffn_dim, dropout=dropout)
        self.ffn = _mlp(dim, ffn_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ndim=3)
        x = x + self.gating(self.norm(x))
        return x + self.ffn(self.norm(x))

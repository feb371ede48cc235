"""Inference-time attention methods: training-free edits of a trained model's attention.

One file per method, each a set of small composable functions on attention scores or
probabilities plus a way to apply them to a model:

* :mod:`attnzoo.inference.act` — ACT attention-sink calibration (Yu et al., ICML 2024);
* :mod:`attnzoo.inference.var` — VAR visual attention redistribution (Kang et al., ICLR 2025);
* :mod:`attnzoo.inference.flowcut` — FlowCut information-flow token pruning (Tong et al., NeurIPS 2025);
* :mod:`attnzoo.inference.recycled` — Recycled Attention decoding (Xu et al., 2024);
* :mod:`attnzoo.inference.pine` — PINE position-invariant document attention (Wang et al., ICLR 2025);
* :mod:`attnzoo.inference.bam` — BAM soft mixture of attention experts (Zhang et al., 2024).

:mod:`attnzoo.inference.hf_edit` applies a probability edit inside a Hugging Face ``transformers``
model through a custom attention function registered with its ``AttentionInterface``.
"""

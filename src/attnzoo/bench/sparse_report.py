"""The sparse suite's result (:func:`attnzoo.bench.sparse_suite.run_sparse_suite`) as Markdown,
JSON and plots of % of the GEMM peak against N, written by :func:`write_sparse_outputs`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.bench.plots import log_axes, save, thin_ticks
from attnzoo.runs import replace_outputs

__all__ = [
    "OUTPUTS",
    "loglog_exponent",
    "sparse_figures",
    "sparse_markdown",
    "write_sparse_outputs",
    "write_sparse_plots",
]

OUTPUTS = ("sparse.json", "sparse.md", "peak_fwd.png", "peak_fwdbwd.png")
_NAMES = {"attnzoo": "attnzoo", "flex": "Flex (compiled)", "natten": "NATTEN", "sdpa": "SDPA + mask"}
_TITLES = {
    "na1d": "1-D neighbourhood (na1d)",
    "na2d": "2-D neighbourhood (na2d)",
    "na3d": "3-D neighbourhood (na3d)",
    "sliding_window": "sliding window (sliding_window_attention)",
    "s2_groups": "S2 groups (grouped_attention)",
    "region": "region attention (segment_attention)",
    "bilevel_routing": "bi-level routing (routed_region_attention)",
}


def loglog_exponent(ns: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(N); NaN for fewer than two sizes."""
    if len(ns) < 2:
        return math.nan
    return float(np.polyfit(np.log(ns), np.log(times), 1)[0])


def _ok(row: dict[str, Any], name: str, p: str) -> dict[str, Any] | None:
    entry = row["contenders"].get(name, {}).get(p)
    return entry if entry and entry.get("status") == "ok" and "min_ms" in entry else None


def _cell(row: dict[str, Any], name: str, p: str) -> str:
    entry = row["contenders"].get(name, {}).get(p)
    if entry is None:
        return "–"
    if entry.get("status") != "ok" or "min_ms" not in entry:
        status = entry.get("status", "?")
        return status if status == "no CPU backward" else f"{status}: {entry.get('reason', '')}"
    via_flex = "compiled FlexAttention" in entry.get("path", "")
    return f"{entry['min_ms']:.1f} ({entry['pct_peak']:.0f}%)" + (" [Flex]" if via_flex else "")


def _memory(row: dict[str, Any], names: list[str]) -> str:
    cells = []
    for name in names:
        entry = _ok(row, name, "fwd")
        cells.append(f"{entry['peak_mib']:.0f}" if entry and "peak_mib" in entry else "–")
    return " / ".join(cells)


def _caps(cfg: dict[str, Any]) -> str:
    caps = cfg.get("caps", {})
    return ", ".join(f"{_NAMES[c]} {caps.get(c, cfg['call_cap_s']):g} s" for c in cfg["contenders"])


def _versus_flex(row: dict[str, Any]) -> str:
    ours, flex = _ok(row, "attnzoo", "fwd"), _ok(row, "flex", "fwd")
    if ours is None or flex is None:
        return "–"
    ratio = flex["min_ms"] / ours["min_ms"]
    return f"{'yes' if ratio > 1 else 'no'} ({ratio:.2f}x)"


def scaling(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per series measured at two or more N: the exponent of min time against N, per contender and pass."""
    series: dict[str, list[dict[str, Any]]] = {}
    for row in doc["cases"]:
        series.setdefault(row["series"], []).append(row)
    out = []
    for name, rows in series.items():
        if len({r["n"] for r in rows}) < 2:
            continue
        exps: dict[str, float] = {}
        for contender in doc["config"]["contenders"]:
            for p in ("fwd", "fwdbwd"):
                ok = [(r["n"], e["min_ms"]) for r in rows if (e := _ok(r, contender, p))]
                if len(ok) >= 2:
                    exps[f"{contender}:{p}"] = loglog_exponent([n for n, _ in ok], [t for _, t in ok])
        out.append({"series": name, "n": sorted({r["n"] for r in rows}), "exponents": exps})
    return out


def headline(doc: dict[str, Any]) -> dict[str, Any]:
    """Shapes where attnzoo and Flex both ran, how many attnzoo wins, and the best % of peak."""
    both = [r for r in doc["cases"] if _ok(r, "attnzoo", "fwd") and _ok(r, "flex", "fwd")]
    wins = [r for r in both if _ok(r, "flex", "fwd")["min_ms"] > _ok(r, "attnzoo", "fwd")["min_ms"]]
    best = {
        c: max((e["pct_peak"] for r in doc["cases"] if (e := _ok(r, c, "fwd"))), default=None)
        for c in doc["config"]["contenders"]
    }
    via = [r for r in both if "compiled FlexAttention" in _ok(r, "attnzoo", "fwd").get("path", "")]
    return {
        "compared_with_flex": len(both),
        "attnzoo_faster": len(wins),
        "attnzoo_via_flex": len(via),
        "attnzoo_via_flex_faster": len([r for r in via if r in wins]),
        "best_pct_peak_fwd": best,
    }


def sparse_markdown(doc: dict[str, Any], command: str) -> str:
    """The report: how it was measured, one table per kernel, scaling exponents."""
    meta, cfg = doc["meta"], doc["config"]
    names = list(cfg["contenders"])
    load = ", ".join(f"{a:.2f}" for a in meta["load_average_before"] + meta["load_average_after"])
    gemms = [r["gemm"]["gflops"] for r in doc["cases"] if "gemm" in r]
    head = headline(doc)
    lines = [
        "# Sparse softmax kernels against FlexAttention, NATTEN and masked SDPA",
        "",
        f"Command: `{command}`. Batch 1, {cfg['heads']} heads x {cfg['head_dim']}, fp32, "
        f"{meta['threads']} thread(s), {meta['cpu']}, torch {meta['torch']}, NATTEN "
        f"{meta['natten'] or 'not installed'}, {meta['date']}; {meta['wall_s']:.0f} s.",
        f"Load average (1, 5, 15 min) before and after: {load}.",
        "",
        f"Per shape every contender and a {cfg['gemm_n']}x{cfg['gemm_n']} fp32 GEMM are timed in this "
        f"process, interleaved: one untimed call each (compiled Flex and attnzoo: two, the first "
        "compiles Flex, which attnzoo's forward may dispatch to), then "
        f"{cfg['repeats']} rounds calling each once in turn; cells give the minimum in ms and, in "
        "brackets, the useful FLOP rate as % of the GEMM's rate in the same rounds"
        + (f" ({min(gemms):.0f}-{max(gemms):.0f} GFLOP/s over the shapes)" if gemms else "")
        + ". Useful FLOPs: 4 d per kept (query, key) pair and head forward (4 N k d for a neighbourhood "
        "of k keys), 2.5x that backward. Flex gets the block mask of the same mask predicate that "
        "the dense SDPA mask is evaluated from; every output is compared with attnzoo's. "
        "A contender is skipped (reason given) when its dense cost predicts more than the "
        f"per-call cap ({_caps(cfg)}) at the GEMM rate (dense contenders: at their best dense rate so "
        "far) or more than "
        f"{cfg['memory_cap_mib']:.0f} MiB, "
        "when one call exceeds the cap (then also at larger N of the series), or when the suite's "
        f"{cfg['budget_s']:.0f} s budget is used up. Peak MiB: resident-set growth of one forward, "
        "measured after all timings.",
        "",
        f"attnzoo is faster than compiled Flex at {head['attnzoo_faster']} of the "
        f"{head['compared_with_flex']} shapes where both ran. At {head['attnzoo_via_flex']} of them "
        "attnzoo's forward dispatched to compiled Flex itself (cells marked [Flex]: "
        "`attnzoo.kernels.flex_dispatch`, inference only; its backward is attnzoo's own), so there "
        "the two run the same kernel and differ by noise and the dispatch overhead "
        f"(attnzoo faster at {head['attnzoo_via_flex_faster']} of those). % of the GEMM peak "
        "against N, forward and forward+backward:",
        "",
        "![peak_fwd.png](peak_fwd.png)",
        "",
        "![peak_fwdbwd.png](peak_fwdbwd.png)",
    ]
    for kernel, title in _TITLES.items():
        rows = [r for r in doc["cases"] if r["kernel"] == kernel]
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| shape | GFLOP fwd | "
            + " | ".join(f"{_NAMES[c]} fwd" for c in names)
            + (" | attnzoo beats Flex" if "flex" in names and "attnzoo" in names else "")
            + " | "
            + " | ".join(f"{_NAMES[c]} fwd+bwd" for c in names)
            + f" | peak MiB fwd ({' / '.join(_NAMES[c] for c in names)}) | max abs diff vs attnzoo |",
            "|---|---:|" + "---:|" * (2 * len(names) + 2 + ("flex" in names and "attnzoo" in names)),
        ]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r['label']} | skipped: {r['skipped']} |")
                continue
            diffs = [
                e["max_abs_diff_vs_attnzoo"]
                for c in names
                if c != "attnzoo" and (e := _ok(r, c, "fwd")) and e.get("max_abs_diff_vs_attnzoo") is not None
            ]
            cells = [r["label"], f"{r['useful_flops_fwd'] / 1e9:.2f}"]
            cells += [_cell(r, c, "fwd") for c in names]
            if "flex" in names and "attnzoo" in names:
                cells.append(_versus_flex(r))
            cells += [_cell(r, c, "fwdbwd") for c in names]
            cells += [_memory(r, names), f"{max(diffs):.1e}" if diffs else "–"]
            lines.append("| " + " | ".join(cells) + " |")
    fits = scaling(doc)
    if fits:
        keys = [f"{c}:{p}" for p in ("fwd", "fwdbwd") for c in names]
        keys = [k for k in keys if any(k in f["exponents"] for f in fits)]
        lines += [
            "",
            "## Scaling exponent of the minimum time against N",
            "",
            "| series | N | "
            + " | ".join(k.replace(":fwdbwd", " fwd+bwd").replace(":fwd", " fwd") for k in keys)
            + " |",
            "|---|---|" + "---:|" * len(keys),
        ]
        for f in fits:
            cells = [f"{f['exponents'][k]:.2f}" if k in f["exponents"] else "–" for k in keys]
            lines.append(f"| {f['series']} | {', '.join(map(str, f['n']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sparse_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """``{"peak_fwd.png": figure, "peak_fwdbwd.png": figure}``: % of the GEMM peak against N, one
    panel per kernel, one line per contender and series, x ticks at the measured sizes and tick
    labels thinned where they would collide (:func:`attnzoo.bench.plots.thin_ticks`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = [k for k in _TITLES if any(r["kernel"] == k for r in doc["cases"])]
    figures = {}
    for p, fname, what in (
        ("fwd", "peak_fwd.png", "forward"),
        ("fwdbwd", "peak_fwdbwd.png", "forward+backward"),
    ):
        cols = 2
        rows_n = max(1, math.ceil(len(kernels) / cols))
        fig, axes = plt.subplots(rows_n, cols, figsize=(13, 3.6 * rows_n), squeeze=False)
        for ax, kernel in zip(axes.flat, kernels):
            cases = [r for r in doc["cases"] if r["kernel"] == kernel]
            for ci, contender in enumerate(doc["config"]["contenders"]):
                for si, series in enumerate(dict.fromkeys(r["series"] for r in cases)):
                    pts = sorted(
                        (r["n"], e["pct_peak"])
                        for r in cases
                        if r["series"] == series and (e := _ok(r, contender, p))
                    )
                    if pts:
                        label = f"{_NAMES[contender]}: {series.split(' ', 1)[1] if ' ' in series else series}"
                        ax.plot(*zip(*pts), marker="os^vD<>ph*"[si % 10], ms=4, color=f"C{ci}", label=label)
            ax.set_title(_TITLES[kernel], fontsize=9)
            ax.set_xlabel("tokens N")
            ax.set_ylabel(f"{what} % of GEMM peak")
            if ax.lines:
                log_axes(ax, sorted({r["n"] for r in cases}))
                ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
            else:
                ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
        for ax in list(axes.flat)[len(kernels) :]:
            ax.axis("off")
        fig.tight_layout()
        thin_ticks(fig)
        figures[fname] = fig
    return figures


def write_sparse_plots(doc: dict[str, Any], out_dir: Path) -> list[str]:
    """Write :func:`sparse_figures` to ``out_dir``; returns the file names written. A figure whose
    texts still overlap (:func:`attnzoo.bench.plots.overlapping_texts`) is named on stderr."""
    files = []
    for fname, fig in sparse_figures(doc).items():
        overlaps = save(fig, out_dir / fname)
        if overlaps:
            print(f"warning: {fname}: overlapping texts {overlaps[:3]}", file=sys.stderr)
        files.append(fname)
    return files


def write_sparse_outputs(doc: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """Write ``sparse.json``, ``sparse.md`` and the plots to ``out_dir`` and remove the files of
    :data:`OUTPUTS` this write did not produce; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "command": command, "headline": headline(doc), "scaling": scaling(doc)}
    (out_dir / "sparse.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "sparse.md").write_text(sparse_markdown(doc, command))
    written = [out_dir / "sparse.json", out_dir / "sparse.md"]
    written += [out_dir / f for f in write_sparse_plots(doc, out_dir)]
    replace_outputs(out_dir, written, OUTPUTS)
    return written

"""Turn a benchmark result document into numbers a person can read: scaling exponents, crossovers
against the softmax baseline, a Markdown report, log-log plots, and ratios against an earlier run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.bench.measure import EQUAL_HEADS, EQUAL_WIDTHS, cost_model
from attnzoo.bench.plots import Panel, Series, chunk_panels, cost_figure, save
from attnzoo.registry import UnknownMechanismError

__all__ = [
    "BASELINE",
    "compare_runs",
    "cost_panels",
    "crossover_n",
    "scaling_exponent",
    "summarise",
    "write_plots",
    "write_report",
]

BASELINE = "mhsa"
_FAMILY_COLOURS = {
    "token_mixer": "tab:blue",
    "cross_attention": "tab:purple",
    "feature_map": "tab:green",
    "gate": "tab:orange",
    "pooling": "tab:red",
}


def _ok(rows: list[dict[str, Any]], key: str = "fwd_ms") -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok" and key in r]


def scaling_exponent(result: dict[str, Any], key: str = "fwd_ms") -> float | None:
    """Least-squares slope of log(latency) against log(N) over the measured sizes (None if < 2)."""
    rows = _ok(result["sizes"], key)
    if len(rows) < 2:
        return None
    n = np.log([r["n"] for r in rows])
    t = np.log([r[key]["median"] for r in rows])
    return float(np.polyfit(n, t, 1)[0])


def crossover_n(result: dict[str, Any], baseline: dict[str, Any], key: str = "fwd_ms") -> float | None:
    """Smallest N (log-interpolated) from which ``result`` is faster than ``baseline``.

    ``None`` when the two share fewer than two sizes or ``result`` is never faster; the smallest
    shared N when it is faster everywhere."""
    ours = {r["n"]: r[key]["median"] for r in _ok(result["sizes"], key)}
    theirs = {r["n"]: r[key]["median"] for r in _ok(baseline["sizes"], key)}
    shared = sorted(set(ours) & set(theirs))
    if len(shared) < 2:
        return None
    ratio = [math.log(ours[n] / theirs[n]) for n in shared]
    if ratio[0] <= 0:
        return float(shared[0])
    for (n0, r0), (n1, r1) in zip(zip(shared, ratio), zip(shared[1:], ratio[1:])):
        if r1 <= 0 < r0:
            frac = r0 / (r0 - r1)
            return float(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))))
    return None


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "–"
    if unit == "flops":
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
            if value >= div:
                return f"{value / div:.2f}{suffix}"
        return f"{value:.0f}"
    return f"{value:.{digits}g}{unit}"


def _cell(row: dict[str, Any] | None, key: str, sub: str | None = None, unit: str = "") -> str:
    if row is None:
        return "–"
    if row.get("status") != "ok":
        return row.get("status", "–")
    value = row.get(key)
    if value is None:
        return "not counted" if key.startswith("flops") and key in row else "–"
    return _fmt(value[sub] if sub else value, unit)


def summarise(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per mechanism: params, FLOPs at the first size, latency and memory at the
    first and last size, scaling exponent, crossover N against the softmax baseline."""
    results = doc["results"]
    baseline = next((r for r in results if r["name"] == BASELINE), None)
    rows = []
    for res in results:
        sizes = res["sizes"]
        first = sizes[0] if sizes else None
        last = sizes[-1] if len(sizes) > 1 else None
        comparable = baseline is not None and res["family"] == "token_mixer" and res["name"] != BASELINE
        rows.append(
            {
                "name": res["name"],
                "family": res["family"],
                "parity": res["parity"],
                "params": res["params"],
                "first": first,
                "last": last,
                "exponent": scaling_exponent(res),
                "crossover": crossover_n(res, baseline) if comparable else None,
            }
        )
    return rows


def _size_label(row: dict[str, Any] | None) -> str:
    return "x".join(str(s) for s in row["size"]) if row else "–"


def write_report(doc: dict[str, Any], out_dir: Path, plots: list[str]) -> Path:
    """Write ``report.md`` into ``out_dir`` and return its path."""
    meta = doc["meta"]
    lines = [
        "# attnzoo benchmark report",
        "",
        f"{meta['date']} · {meta['cpu']} · {meta['threads']} thread(s) · torch {meta['torch']} · "
        f"attnzoo {meta['attnzoo']} · preset `{meta['config']['preset']}` · batch {meta['config']['batch']}",
        "",
        "Latency is the median wall time of the forward pass (no grad) over repeated runs; memory is the "
        "peak resident-set growth during one call, measured in a fresh process per mechanism. FLOPs are "
        "counted by `torch.utils.flop_counter` (matmuls, convolutions, attention; elementwise work is not "
        "counted, and a mechanism whose work is all elementwise shows *not counted*, never 0). "
        "*exp.* is the log-log slope of latency against the number of tokens N; *x-over* is the "
        f"N from which a token mixer is faster than softmax attention (`{BASELINE}`) in this run. "
        "Modules run in eval mode; for cross-attention the size is the context's (the queries are fixed).",
        "",
        "Plots: " + (", ".join(f"[{p}]({p})" for p in plots) if plots else "none"),
        "",
        "| mechanism | family | params | FLOPs @ size 1 | size 1 | latency 1 | memory 1 | size 2 | latency 2 "
        "| memory 2 | exp. | x-over | parity |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in summarise(doc):
        first, last = row["first"], row["last"]
        lines.append(
            f"| `{row['name']}` | {row['family']} | {_fmt(row['params'], 'flops')} | "
            f"{_cell(first, 'flops_fwd', unit='flops')} | {_size_label(first)} | "
            f"{_cell(first, 'fwd_ms', 'median', ' ms')} | {_cell(first, 'peak_fwd_mb', unit=' MiB')} | "
            f"{_size_label(last)} | {_cell(last, 'fwd_ms', 'median', ' ms')} | "
            f"{_cell(last, 'peak_fwd_mb', unit=' MiB')} | {_fmt(row['exponent'], digits=2)} | "
            f"{_fmt(row['crossover'], digits=3)} | {row['parity']} |"
        )
    backward = [r for r in doc["results"] if any("fwdbwd_ms" in s for s in r["sizes"])]
    if backward:
        lines += [
            "",
            "## Forward + backward",
            "",
            "| mechanism | size | fwd ms | fwd+bwd ms | fwd MiB | fwd+bwd MiB | FLOPs fwd+bwd |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for res in backward:
            for s in res["sizes"]:
                lines.append(
                    f"| `{res['name']}` | {_size_label(s)} | {_cell(s, 'fwd_ms', 'median')} | "
                    f"{_cell(s, 'fwdbwd_ms', 'median')} | {_cell(s, 'peak_fwd_mb')} | "
                    f"{_cell(s, 'peak_fwdbwd_mb')} | {_cell(s, 'flops_fwdbwd', unit='flops')} |"
                )
    lines += _variant_parameters(doc)
    lines += _cost_models(doc)
    failures = [(r["name"], s) for r in doc["results"] for s in r["sizes"] if s.get("status") not in ("ok",)]
    if failures:
        lines += ["", "## Not measured", ""]
        lines += [
            f"- `{name}` at {_size_label(s)}: {s['status']}" + (f" ({s['error']})" if s.get("error") else "")
            for name, s in failures
        ]
    lines += ["", *_configurations(doc)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _variant_parameters(doc: dict[str, Any]) -> list[str]:
    """For every mechanism benchmarked as several ``name[label]`` variants (card ``bench["variants"]``)
    of different sizes: each variant's parameters and its saving against the mechanism's first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for res in doc["results"]:
        groups.setdefault(res["mechanism"], []).append(res)
    lines: list[str] = []
    for variants in groups.values():
        base = variants[0]["params"]
        if len(variants) < 2 or not base or len({res["params"] for res in variants}) == 1:
            continue  # one variant, or all of one size: nothing saved
        lines += ["", f"| variant | params | saving vs `{variants[0]['name']}` |", "|---|---:|---:|"]
        for res in variants:
            params = res["params"]
            cells = "– | –" if params is None else f"{params:,} | {1.0 - params / base:+.1%}"
            lines.append(f"| `{res['name']}` | {cells} |")
    if not lines:
        return []
    return [
        "",
        "## Parameters by variant",
        "",
        "Parameters of each benchmarked variant (the module's own); saving = 1 - params / the first "
        "variant's (negative: larger).",
        *lines,
    ]


def _cost_models(doc: dict[str, Any]) -> list[str]:
    """For every result whose card names a cost model (``bench["cost_model"]``, see
    :func:`attnzoo.bench.measure.cost_model`): the model's values at each measured size beside the
    measured FLOPs, latency and memory, with the ratio of modelled to counted FLOPs."""
    lines: list[str] = []
    for res in doc["results"]:
        try:
            model = cost_model(res["mechanism"])
        except UnknownMechanismError:
            lines += ["", f"`{res['name']}`: no cost model (mechanism not registered in this process)"]
            continue
        rows = _ok(res["sizes"])
        if model is None or not rows:
            continue
        values = [model(res["config"], r["n"], r["batch"]) for r in rows]
        labels = list(values[0])
        header = " | ".join(labels)
        lines += [
            "",
            f"`{res['name']}` (`{json.dumps(res['config'])}`)",
            "",
            f"| size | {header} | FLOPs counted | model / counted FLOPs | latency | memory |",
            "|---|" + "---:|" * (len(labels) + 4),
        ]
        for r, v in zip(rows, values):
            ratio = v["model FLOPs"] / r["flops_fwd"] if "model FLOPs" in v and r.get("flops_fwd") else None
            lines.append(
                f"| {_size_label(r)} | " + " | ".join(_fmt(v[k], "flops") for k in labels) + " | "
                f"{_cell(r, 'flops_fwd', unit='flops')} | {_fmt(ratio, digits=4)} | "
                f"{_cell(r, 'fwd_ms', 'median', ' ms')} | {_cell(r, 'peak_fwd_mb', unit=' MiB')} |"
            )
    if not lines:
        return []
    intro = "Modelled values (the card's `bench['cost_model']`) beside the measured cost of each size."
    return ["", "## Cost models", "", intro, *lines]


def _configurations(doc: dict[str, Any]) -> list[str]:
    """The constructor configuration each mechanism ran with, and its card's own beside it."""
    equal = doc["meta"]["config"].get("equal_width", False)
    lines = [
        "## Configurations",
        "",
        (
            "Equal width: every mechanism of a family at the same width and head count "
            f"({', '.join(f'{k} {v}' for k, v in EQUAL_WIDTHS.items())}; {EQUAL_HEADS} heads where the "
            "constructor has `num_heads`); the card's own benchmark configuration is shown beside it."
            if equal
            else "Each mechanism at its card's own benchmark configuration (`--equal-width` compares a "
            "family at one width)."
        ),
        "",
        "| mechanism | params | ran with | card's own |",
        "|---|---:|---|---|",
    ]
    for res in doc["results"]:
        ran, own = res.get("config", {}), res.get("card_config", res.get("config", {}))
        same = "same" if ran == own else f"`{json.dumps(own)}`"
        lines.append(f"| `{res['name']}` | {_fmt(res['params'], 'flops')} | `{json.dumps(ran)}` | {same} |")
    return lines


def _families(doc: dict[str, Any]) -> list[str]:
    """The families of ``doc``'s results, in the usual order, then any others."""
    present = {r["family"] for r in doc["results"]}
    return [f for f in _FAMILY_COLOURS if f in present] + sorted(present - set(_FAMILY_COLOURS))


def _is_grid(res: dict[str, Any]) -> bool:
    """Whether ``res`` was swept over grids (H*W or D*H*W tokens) rather than sequences."""
    return any(len(s["size"]) > 1 for s in res["sizes"]) or res["spatial_dims"] >= 2


def cost_panels(doc: dict[str, Any], family: str, keys: tuple[str, ...]) -> list[Panel]:
    """The cost panels of ``family``: its sequence and its grid mechanisms apart (their N are not
    the same sizes), each split into panels of at most :data:`~attnzoo.bench.plots.PANEL_LINES`."""
    panels = []
    for grid, kind in ((False, "sequences"), (True, "grids")):
        series = []
        for res in doc["results"]:
            if res["family"] != family or _is_grid(res) != grid:
                continue
            rows = [r for r in res["sizes"] if r.get("status") == "ok"]
            ys = {k: [_value(r, k) for r in rows] for k in keys}
            if rows:
                series.append(Series(res["name"], [r["n"] for r in rows], ys, grid=grid))
        if series:
            panels += chunk_panels(f"{family}, {kind}", series)
    return panels


def _value(row: dict[str, Any], key: str) -> float | None:
    """``row[key]`` (a timing dict: its median), or the dotted path ``"interleaved.min"``."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):
        value = value.get("median")
    return None if value is None else float(value)


def write_plots(doc: dict[str, Any], out_dir: Path) -> list[str]:
    """Latency and memory against N (log-log), one row of panels per family and kind of input
    (sequences, grids), at most :data:`~attnzoo.bench.plots.PANEL_LINES` lines each with their legend
    beside them; returns the file names."""
    panels = [p for f in _families(doc) for p in cost_panels(doc, f, ("fwd_ms", "peak_fwd_mb"))]
    files = []
    for key, ylabel, fname in (
        ("fwd_ms", "forward latency (ms, median)", "latency.png"),
        ("peak_fwd_mb", "forward peak memory (MiB)", "memory.png"),
    ):
        fig = cost_figure(panels, [(key, ylabel)], xlabel=_XLABEL)
        save(fig, out_dir / fname)
        files.append(fname)
    return files


_XLABEL = "tokens N (sequence length, or H*W / D*H*W for grids)"


def compare_runs(
    new: dict[str, Any], old: dict[str, Any], *, threshold: float = 1.10
) -> tuple[list[str], int]:
    """Per-mechanism, per-size ratios new/old of forward latency and memory.

    Returns the table lines and the number of regressions (latency ratio above ``threshold``)."""
    old_by_name = {r["name"]: r for r in old["results"]}
    lines = [
        "| mechanism | size | latency new/old | memory new/old | flag |",
        "|---|---|---:|---:|---|",
    ]
    regressions = 0
    for res in new["results"]:
        before = old_by_name.get(res["name"])
        if before is None:
            continue
        old_sizes = {tuple(s["size"]): s for s in _ok(before["sizes"])}
        for s in _ok(res["sizes"]):
            o = old_sizes.get(tuple(s["size"]))
            if o is None:
                continue
            lat = s["fwd_ms"]["median"] / o["fwd_ms"]["median"]
            mem = (s["peak_fwd_mb"] + 1.0) / (o["peak_fwd_mb"] + 1.0)
            flag = "REGRESSION" if lat > threshold else ("faster" if lat < 1 / threshold else "")
            regressions += flag == "REGRESSION"
            lines.append(f"| `{res['name']}` | {_size_label(s)} | {lat:.2f} | {mem:.2f} | {flag} |")
    return lines, regressions

"""The markdown tables of RESULTS.md, from the machine-readable ablation file `make ablation` writes.

    .venv/bin/python bench/ablation_report.py results/ablation_demo.json

The file holds each setting twice, as `make ablation` scores it: its final checkpoint ("m2") and
its best on the target val ("m2 (best on val)"); each gets its own tables, final first. Prints:
paper Tables 1 + 3 on the built-in benchmark (mean ± std of mIoU and per-class IoU per
setting), the depth metrics per setting beside the constant baseline, the per-seed mIoU, the
orderings the paper claims (M1 < M2, M3 ≤ M4) seed by seed, and the gap closure
(M4 − source-only) / (oracle − source-only). Nothing here is tuned: it reads numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ORDER = ("source_only", "advent", "dada", "m1", "m2", "m2_entropy", "m3", "m4", "oracle")
NAMES = {"source_only": "source only", "advent": "ADVENT (Table 1)", "dada": "DADA (Table 1)", "m1": "M1",
         "m2": "M2", "m2_entropy": "M2 heads, F̂ = entropy", "m3": "M3", "m4": "M4", "oracle": "oracle (target labels)"}


def pm(pair) -> str:
    if pair is None or pair[0] is None:
        return "–"
    mean, std = pair
    return f"{mean:.1f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.1f} ± {std:.1f}"


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def tables(results: dict, title: str) -> list[str]:
    settings = results["settings"]
    present = [s for s in ORDER if s in settings]
    classes = results["classes"]
    lines = [f"### {title}", "", "| setting | n | " + " | ".join(classes) + " | mIoU |",
             "|---|---:|" + "---:|" * (len(classes) + 1)]
    for s in present:
        row = settings[s]["mean"]
        lines.append(f"| {NAMES[s]} | {settings[s]['n']} | " + " | ".join(pm(row["iou"][c]) for c in classes)
                     + f" | **{pm(row['miou'])}** |")
    lines += ["", "Per seed (mIoU %):", "", "| setting | " + " | ".join(f"seed {k}" for k in _seeds(settings)) + " |",
              "|---|" + "---:|" * len(_seeds(settings))]
    for s in present:
        seeds = settings[s]["seeds"]
        lines.append(f"| {NAMES[s]} | " + " | ".join(
            f"{100 * seeds[k]['miou']:.1f}" if k in seeds and seeds[k]["miou"] is not None else "–"
            for k in _seeds(settings)) + " |")
    lines += ["", *orderings(settings), "", *collapses(settings), ""]
    return lines


def collapses(settings: dict) -> list[str]:
    """Which runs had an auxiliary head flagged as collapsed (udaseg/collapse.py), from eval's `heads`."""
    hits, judged = [], 0
    for s in ORDER:
        for seed, entry in sorted(settings.get(s, {}).get("seeds", {}).items()):
            heads = entry.get("heads")
            if not heads:
                continue
            judged += 1
            for name, it in sorted((heads.get("collapsed") or {}).items()):
                hits.append(f"{NAMES[s]} seed {seed}: {name} at iteration {it}")
    if not judged:
        return []
    return [f"- collapsed heads over the {judged} trained runs with a head log: " + ("; ".join(hits) if hits else "**none**")]


def _seeds(settings: dict) -> list[str]:
    return sorted({k for s in settings.values() for k in s["seeds"]}, key=lambda k: (len(k), k))


def _miou(settings: dict, setting: str, seed: str) -> float | None:
    entry = settings.get(setting, {}).get("seeds", {}).get(seed)
    return None if entry is None or entry["miou"] is None else 100 * entry["miou"]


def orderings(settings: dict) -> list[str]:
    out = []
    seeds = _seeds(settings)
    for a, b, op in (("m1", "m2", "<"), ("m3", "m4", "≤"), ("source_only", "m2", "<")):
        if a in settings and b in settings:
            per = [(_miou(settings, a, k), _miou(settings, b, k)) for k in seeds]
            per = [(x, y) for x, y in per if x is not None and y is not None]
            ok = sum((x < y) if op == "<" else (x <= y) for x, y in per)
            ma, mb = settings[a]["mean"]["miou"][0], settings[b]["mean"]["miou"][0]
            holds = (ma < mb) if op == "<" else (ma <= mb)
            diffs = [y - x for x, y in per]
            out.append(f"- {NAMES[a]} {op} {NAMES[b]}: means {ma:.1f} vs {mb:.1f} ({'holds' if holds else 'does not hold'}); "
                       f"per seed {ok} of {len(per)} (paired differences {', '.join(f'{d:+.1f}' for d in diffs)}; "
                       f"mean {sum(diffs) / max(len(diffs), 1):+.2f})")
    if all(s in settings for s in ("source_only", "m4", "oracle")):
        closures = []
        for k in seeds:
            so, m4, orc = (_miou(settings, s, k) for s in ("source_only", "m4", "oracle"))
            if None not in (so, m4, orc) and orc != so:
                closures.append((m4 - so) / (orc - so))
        so, m4, orc = (settings[s]["mean"]["miou"][0] for s in ("source_only", "m4", "oracle"))
        out.append(f"- gap closure (M4 − source only) / (oracle − source only): {(m4 - so) / (orc - so):.2f} on the means; "
                   f"per seed {', '.join(f'{c:.2f}' for c in closures)}")
    return out


def depth_table(results: dict, title: str) -> list[str]:
    settings = results["settings"]
    lines = [f"### Depth on the target val (metres), {title}, mean ± std over seeds", "",
             "| setting | AbsRel | RMSE | δ<1.25 | constant baseline AbsRel | AbsRel below the constant |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in ORDER:
        if s not in settings:
            continue
        rows = [v for v in settings[s]["seeds"].values() if v.get("depth") and v["depth"].get("abs_rel") is not None]
        if not rows:
            continue
        absrel = mean_std([r["depth"]["abs_rel"] for r in rows])
        rmse = mean_std([r["depth"]["rmse"] for r in rows])
        d1 = mean_std([r["depth"]["delta1"] for r in rows])
        base = [r["depth_baseline"]["abs_rel"] for r in rows if r.get("depth_baseline")]
        gains = [1 - r["depth"]["abs_rel"] / r["depth_baseline"]["abs_rel"] for r in rows if r.get("depth_baseline")]
        fmt = lambda ms, d=3: f"{ms[0]:.{d}f}" + ("" if math.isnan(ms[1]) else f" ± {ms[1]:.{d}f}")  # noqa: E731
        lines.append(f"| {NAMES[s]} | {fmt(absrel)} | {fmt(rmse, 1)} | {fmt(d1)} | "
                     f"{(sum(base) / len(base)):.3f} | {100 * sum(gains) / len(gains):.0f} % |" if base else
                     f"| {NAMES[s]} | {fmt(absrel)} | {fmt(rmse, 1)} | {fmt(d1)} | – | – |")
    return lines + [""]


BEST = " (best on val)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    final = {k: v for k, v in results["settings"].items() if not k.endswith(BEST)}
    best = {k[: -len(BEST)]: v for k, v in results["settings"].items() if k.endswith(BEST)}
    lines: list[str] = []
    parts = (("final checkpoints", final), ("best-on-val checkpoints (model selection on the target val)", best))
    for title, settings in parts:
        if settings:
            part = {**results, "settings": settings}
            n = max(v["n"] for v in settings.values())
            lines += tables(part, f"{title}, mIoU (%) on the target val, mean ± std over {n} seeds")
            lines += depth_table(part, title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The density-collapse selection experiments as RESULTS.md reports them, decided by the rule written there.

    .venv/bin/python bench/selection_report.py results/selection_demo.json \
        --reference results/ablation_demo.json --runs runs/selection/demo [--write]

Reads the arms' eval summaries (`make selection` -> compare --json), the M1 and dada rows of the
reference ablation file (same seeds), and each arm's training log (`<runs>/<arm>_s<seed>/train/log.jsonl`)
for the collapse flags (udaseg/collapse.py's rule) and the density output traces. Prints per seed:
mIoU, the paired difference against M1 of the same seed, collapses, traces; then applies the rule
of RESULTS.md ("selection rule") mechanically and prints the arm it picks. `--write` stores the
collapse flags and traces into the selection file, so it holds everything the section cites.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from udaseg.collapse import collapse_summary

CANDIDATES = ("m2_live", "m2_auxlr1", "m2_nodecay", "m2_detached")  # nearest the release first (the tie rule)
ARMS = (*CANDIDATES, "m2_entropy", "dada_live", "dada_unit")
TIE = 0.3  # mIoU points


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def miou(results: dict, setting: str, seed: str) -> float | None:
    entry = results["settings"].get(setting, {}).get("seeds", {}).get(seed)
    return None if not entry or entry.get("miou") is None else 100 * entry["miou"]


def heads_of(runs: Path, arm: str, seed: str) -> dict:
    return collapse_summary(read_log(runs / f"{arm}_s{seed}" / "train" / "log.jsonl"), trace_points=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("selection", type=Path)
    parser.add_argument("--reference", type=Path, required=True, help="the ablation file holding m1 and dada of the same seeds")
    parser.add_argument("--runs", type=Path, required=True, help="the selection runs folder (training logs)")
    parser.add_argument("--write", action="store_true", help="store collapse flags and traces into the selection file")
    args = parser.parse_args()
    sel = json.loads(args.selection.read_text())
    ref = json.loads(args.reference.read_text())
    arms = [a for a in ARMS if a in sel["settings"]]
    seeds = sorted({k for a in arms for k in sel["settings"][a]["seeds"]}, key=int)
    heads = {(a, k): heads_of(args.runs, a, k) for a in arms for k in seeds}
    if args.write:
        for (a, k), h in heads.items():
            if k in sel["settings"][a]["seeds"]:
                sel["settings"][a]["seeds"][k]["heads"] = h
        args.selection.write_text(json.dumps(sel, indent=1) + "\n")

    out = ["| arm | " + " | ".join(f"seed {k}: mIoU (− M1)" for k in seeds) + " | mean − M1 | density collapsed |",
           "|---|" + "---:|" * len(seeds) + "---:|---|"]
    # M1 and raw dada re-run in the selection when the L arm did not reproduce the reference file's M2
    m1_src, m1_name = (sel, "M1 (re-run)") if "m1" in sel["settings"] else (ref, "M1 (reference file)")
    m1 = {k: miou(m1_src, "m1", k) for k in seeds}
    out.append(f"| {m1_name} | " + " | ".join(f"{m1[k]:.1f}" for k in seeds) + " | – | – |")
    out.append("| M2 in the reference file | " + " | ".join(f"{miou(ref, 'm2', k):.1f}" for k in seeds) + " | – | – |")
    if "dada_live" not in sel["settings"]:
        out.append("| dada, raw depth in F̂ (reference file) | " + " | ".join(f"{miou(ref, 'dada', k):.1f}" for k in seeds)
                   + " | – | – |")
    paired: dict[str, float] = {}
    collapsed: dict[str, int] = {}
    for a in arms:
        diffs = [miou(sel, a, k) - m1[k] for k in seeds]
        paired[a] = sum(diffs) / len(diffs)
        head = "depth" if a.startswith("dada") else "density"
        flags = [(k, heads[a, k]["collapsed"]) for k in seeds]
        hit = [f"s{k}@{min(v for n, v in f.items() if n.startswith(head))}" for k, f in flags
               if any(n.startswith(head) for n in f)]
        collapsed[a] = len(hit)
        out.append(f"| {a} | " + " | ".join(f"{miou(sel, a, k):.1f} ({d:+.1f})" for k, d in zip(seeds, diffs))
                   + f" | **{paired[a]:+.2f}** | {len(hit)} of {len(seeds)}" + (f" ({', '.join(hit)})" if hit else "") + " |")
    out += ["", "Output traces (mean ± std of the head's output, target mean; raw units: density 0..255, inverse depth):", ""]
    for a in arms:
        for k in seeds:
            for name, points in sorted(heads[a, k]["trace"].items()):
                if not (name.startswith("density") or (a.startswith("dada") and name.startswith("depth"))):
                    continue
                cells = ", ".join(f"{it}: {m:.3g}±{s:.2g} (t {t:.3g})" if t is not None else f"{it}: {m:.3g}±{s:.2g}"
                                  for it, m, s, t in points)
                out.append(f"- {a} s{k} {name}: {cells}")
    # the rule, mechanically
    alive = [a for a in CANDIDATES if a in paired and collapsed[a] == 0]
    out += ["", f"Candidates without a collapsed density head: {', '.join(alive) or 'none'}."]
    pool = alive or [a for a in CANDIDATES if a in paired]
    best = max(pool, key=lambda a: paired[a])
    near = [a for a in pool if paired[best] - paired[a] <= TIE]
    chosen = min(near, key=CANDIDATES.index)
    out.append(f"Highest mean paired difference: {best} ({paired[best]:+.2f}); within {TIE} of it: {', '.join(near)}; "
               f"by the rule the demo's m2 becomes **{chosen}**" + ("" if alive else " (no arm survived without collapse)") + ".")
    for arm in ("dada_live", "dada_unit"):
        if arm in collapsed:
            out.append(f"{arm}: depth head collapsed in {collapsed[arm]} of {len(seeds)} seeds (mean − M1 {paired[arm]:+.2f}).")
    print("\n".join(out))


if __name__ == "__main__":
    main()

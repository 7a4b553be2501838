#!/usr/bin/env python3
"""`make gpu-check`: one prepared command that proves and times every CUDA path of udaseg.

    make gpu-check                          # .venv/bin/python when there is one, else python3
    make gpu-check PYTHON_GPU=python3       # a GPU machine whose python3 has torch, triton, ... only
    python3 bench/gpu_check.py [--only ITEM ...] [--budget SECONDS] [--cpu] [--keep]

Runs from the repository root with any interpreter that holds torch, torchvision, triton, scipy,
scikit-learn, h5py, typer, rich and pillow (pytest for `pytest_cuda`): the package is imported
from the tree, nothing is installed. Writes gpu_report.json, gpu_report.md and gpu_check.log
(everything the items printed) into $GPU_REPORT_DIR (default runs/gpu-check/ in the repository),
rewriting the report after every item so that an interrupted run leaves what it measured.

On CUDA (< 8 minutes in all; a per-item budget and a total guard, --budget, stop what overruns):

    refine_equal      Triton refine == torch refine on CUDA == scipy reference: the adversarial maps
                      of udaseg/testing/refine_cases.py + realistic maps at 1024x2048, batch 1 and a mixed
                      batch of 16, 4- and 8-connectivity; any difference fails, with its pixel count
    gmm_cuda          D_s / D_t density builders and log-pdf on CUDA == CPU (4 covariance types)
    pytest_cuda       every CUDA-marked test: python -m pytest -m cuda
    refine_speed      refine ms/image at batch 1 and 16, Triton and torch-CUDA, vs scipy timed here;
                      target: <= 0.2 ms per 1024x2048 image at batch 16 (the pipeline's backend)
    train_step        stage-1 step, ResNet-101 random init, 1280x760, batch 1+1, fp32 and bf16:
                      images/s, peak memory, m2 / seg-only; target: m2 <= 1.3x seg_both in bf16
    ddp_resume        torchrun (1 GPU) train 20 iterations, Ctrl-C, --continue 10 more == an
                      uninterrupted 30-iteration run (model and discriminator weights)
    eval_pseudolabel  eval and pseudolabel throughput at 1280x760 -> 2048x1024 vs forward-only;
                      target: >= 90 % of forward-only

Without CUDA the same command runs the correctness part at tiny sizes (torch refine vs scipy,
the Triton kernel under TRITON_INTERPRET=1 on small crops) and the GPU items' own code on the CPU
at toy sizes (SCALE["cpu"]): those report `needs-gpu` (their figures measure nothing) unless the
code breaks or a check that holds on any device fails. It says which items need a GPU and exits 0
(1 when anything failed or errored). `--only ddp_resume` also runs the torchrun item (~1.5 min).

Internals: the parent process (no torch) starts one worker process that runs the items in
order and appends JSON records (start / partial / result) to a file; the parent enforces each
item's budget, kills and restarts the worker past it, and writes the report.

Structure: this parent imports no torch. It runs each item as its own process
(`bench/gpu_items.py --item NAME`, its own process group) with the item's budget as timeout
(counted from when the process has imported torch), reads the JSON record the item wrote (partial
results survive a timeout), merges the records into the report and rewrites it after every item.
The first item's process also resolves the mode (CUDA or CPU) and reports the environment.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gpu_items import BY_NAME, REPO, child_env, fmt, kill_tree, tail  # noqa: E402  (stdlib only at import)

ITEMS_SCRIPT = BENCH / "gpu_items.py"
FORMAT = "udaseg.gpu_check.v1"
DEFAULT_BUDGET = {"cuda": 450.0, "cpu": 400.0}  # seconds in all; the limit is 8 minutes on CUDA
GRACE_S = 5.0  # past an item's budget before its process group is killed
STARTUP_S = 120.0  # an item process may take this long to import torch before its budget starts
BAD = ("fail", "error", "timeout")


class Report:
    def __init__(self, out_dir: Path, names: list[str], command: str, budget: float | None):
        self.out_dir = out_dir
        self.data: dict[str, Any] = {
            "format": FORMAT, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "mode": None, "env": {}, "budget_s": budget, "elapsed_s": 0.0, "complete": False,
            "items": [{"item": n, "title": BY_NAME[n].title, "needs_gpu": BY_NAME[n].needs_gpu, "status": "pending"}
                      for n in names],
        }
        self.t0 = time.time()

    def item(self, name: str) -> dict:
        return next(i for i in self.data["items"] if i["item"] == name)

    def update(self, name: str, **fields) -> None:
        entry = self.item(name)
        entry.update({k: v for k, v in fields.items() if k not in ("type",)})

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        mode = self.data["mode"]
        self.data["needs_gpu"] = [i["item"] for i in self.data["items"] if i["needs_gpu"]] if mode == "cpu" else []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu_report.json", json.dumps(self.data, indent=1, default=str)),
                           ("gpu_report.md", self.markdown())):
            tmp = self.out_dir / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out_dir / name)

    def markdown(self) -> str:
        d, env = self.data, self.data["env"]
        mode = d["mode"] or "?"
        out = ["# udaseg gpu-check", ""]
        out.append(f"- date: {d['created']} (UTC); mode: **{mode}**"
                   + (" — correctness at tiny sizes and smoke runs only; no figure here is a GPU measurement"
                      if mode == "cpu" else ""))
        if env.get("gpu"):
            out.append(f"- GPU: {env['gpu']}, {env.get('gpu_memory_gib')} GiB, compute capability "
                       f"{env.get('compute_capability')}, {env.get('multiprocessors')} SMs"
                       + (f", driver {env['driver']}" if env.get("driver") else ""))
        if env:
            out.append(f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn', 'n/a')}), "
                       f"Triton {env.get('triton')}, torchvision {env.get('torchvision')}, Python {env.get('python')}, "
                       f"numpy {env.get('numpy')}, scipy {env.get('scipy')}; {env.get('cpus')} CPUs; "
                       f"{env.get('platform')}")
            if env.get("commit"):
                out.append(f"- commit: {env['commit']}")
        out.append(f"- command: `{d['command']}`; wall {d['elapsed_s']:.0f} s of a {fmt(d.get('budget_s'), 0)} s budget; "
                   f"{'complete' if d['complete'] else 'INCOMPLETE (still running or interrupted)'}")
        step = self.item("train_step") if any(i["item"] == "train_step" for i in d["items"]) else {}
        bn = (step.get("figures") or {}).get("batchnorm")
        if bn:
            out.append(f"- BatchNorm in the random-init step timing: {bn}")
        if mode == "cpu":
            out.append(f"- needs a GPU: {', '.join(d.get('needs_gpu', []))} (run `make gpu-check` on a CUDA machine)")
        out += ["", "| item | status | result | s |", "|---|---|---|---:|"]
        for i in d["items"]:
            status = i["status"].upper() + (" (smoke ok)" if i.get("smoke") == "ok" else "")
            out.append(f"| {i['item']} | {status} | {str(i.get('summary', '')).replace('|', chr(92) + '|')} | "
                       f"{fmt(i.get('seconds'), 1)} |")
        targets = [(i["item"], t) for i in d["items"] for t in i.get("targets", [])]
        if targets:
            out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
            for _, t in targets:
                out.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
        for i in d["items"]:
            out += ["", f"## {i['item']}: {i['title']}", "", f"status: **{i['status']}**"
                    + (f" ({fmt(i.get('seconds'), 1)} s)" if i.get("seconds") is not None else "")]
            if i.get("summary"):
                out.append(f"\n{i['summary']}")
            if i.get("lines"):
                out += [""] + [f"- {line}" for line in i["lines"]]
            if i.get("error"):
                out += ["", "```", str(i["error"]).strip()[-3000:], "```"]
        return "\n".join(out) + "\n"


def run_process(cmd: list[str], timeout: float, log, ready: Path | None = None) -> int | None:
    """Run `cmd` in its own process group, output to the log; its exit code, or None when it
    ran past `timeout` and the group (torchrun and pytest children included) was killed. With
    `ready`, the timeout counts from when that file appears (the item has imported torch), and
    the start-up itself may take STARTUP_S more."""
    log.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    start, since = time.time(), None
    try:
        while proc.poll() is None:
            now = time.time()
            if since is None and ready is not None and ready.is_file():
                since = now
            limit = since + timeout if since is not None else start + timeout + (STARTUP_S if ready else 0)
            if now > limit:
                kill_tree(proc, group=True)
                return None
            time.sleep(0.2)
        return proc.returncode
    except KeyboardInterrupt:
        kill_tree(proc, group=True)
        raise


def item_result(name: str, mode: str, budget: float, work: Path, log, with_env: bool = False,
                grace: float = GRACE_S) -> dict:
    """One item's record: what its process wrote, or why it wrote nothing (timeout, crash). With
    `with_env` the record also holds the resolved mode and the environment (the report's header)."""
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ITEMS_SCRIPT), "--item", name, "--mode", mode, "--budget", f"{budget:.1f}",
           "--out", str(out), "--work", str(work)] + (["--with-env"] if with_env else [])
    t0 = time.time()
    rc = run_process(cmd, budget + grace, log, ready=out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    seconds = round(time.time() - t0, 1)
    if rc is None:
        why = f"stopped at its {budget:.0f} s budget"
        return {**res, "status": "timeout", "seconds": seconds, "error": tail(_log_tail(log.name), 3000),
                "summary": f"{why}; partial results kept" if res.get("lines") else why}
    if res.get("status") in (None, "running"):
        return {**res, "status": "error", "seconds": seconds, "error": tail(_log_tail(log.name), 3000),
                "summary": f"the item's process died (exit {rc}) before writing its result"}
    return res


def as_smoke(item, res: dict) -> dict:
    """On CPU a GPU item ran at toy sizes: its figures measure nothing, so 'needs-gpu' (a 'fail'
    of a check that holds on any device, marked hard, stays a fail)."""
    if not item.needs_gpu or res.get("status") not in ("pass", "fail") or (res.get("hard") and res["status"] == "fail"):
        return res
    res = {**res, "verdict_at_toy_size": res["status"], "status": "needs-gpu", "smoke": "ok",
           "summary": "smoke run on CPU at toy sizes ok (no measurement): " + str(res.get("summary", ""))}
    res.pop("targets", None)
    return res


def orchestrate(args) -> int:
    out_dir = Path(args.out or os.environ.get("GPU_REPORT_DIR") or REPO / "runs" / "gpu-check").expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in BY_NAME if not args.only or n in args.only]
    report = Report(out_dir, names, " ".join([Path(sys.executable).name, *sys.argv]), args.budget)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="udaseg-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report.write()
    print(f"udaseg gpu-check: report -> {out_dir}/gpu_report.md (log: gpu_check.log)", flush=True)

    def show(entry: dict) -> None:
        print(f"[{entry['status'].upper():>9}] {entry['item']:<17} {fmt(entry.get('seconds'), 1):>6} s  "
              f"{entry.get('summary', '')}", flush=True)

    with open(out_dir / "gpu_check.log", "w", buffering=1) as log:
        try:
            mode = "cpu" if args.cpu else "auto"  # the first item's process resolves 'auto' and reports it
            deadline = t0 + (args.budget or DEFAULT_BUDGET["cpu" if args.cpu else "cuda"])
            for name in names:
                item = BY_NAME[name]
                left = deadline - time.time()
                budget = min(args.item_budget.get(name, item.budget.get(mode, item.budget["cuda"])), left)
                if mode == "cpu" and item.needs_gpu and not (item.cpu_smoke or args.only):
                    res = {"status": "needs-gpu", "seconds": 0.0,
                           "summary": f"needs a GPU (not smoke-run on CPU by default; --only {name} runs it)"}
                elif left < 3:
                    res = {"status": "skipped", "seconds": 0.0, "summary": "not started: the total time budget is spent"}
                else:
                    report.update(name, status="running")
                    report.write()
                    res = item_result(name, mode, budget, work, log, with_env=not report.data["env"], grace=args.grace)
                    if res.get("env"):  # the first item's process: the mode it resolved and the environment
                        mode, env = res.pop("mode_resolved"), res.pop("env")
                        report.data.update(mode=mode, env=env)
                        if not args.budget:  # the default total budget is the resolved mode's
                            deadline = t0 + DEFAULT_BUDGET[mode]
                        report.data["budget_s"] = round(deadline - t0, 1)
                        print(f"mode {mode}: {env.get('gpu', 'no GPU')}; torch {env.get('torch')}, "
                              f"Triton {env.get('triton')}, Python {env.get('python')}", flush=True)
                    res = as_smoke(item, res) if mode == "cpu" else res
                res.pop("hard", None)
                report.update(name, **res)
                report.write()
                show(report.item(name))
        except KeyboardInterrupt:
            for entry in report.data["items"]:
                if entry["status"] in ("pending", "running"):
                    entry.update(status="timeout", summary="interrupted (Ctrl-C)")
        finally:
            if not args.keep and not args.work:
                shutil.rmtree(work, ignore_errors=True)
    report.data["complete"] = True
    report.write()
    items = report.data["items"]
    bad = [i["item"] for i in items if i["status"] in BAD]
    gpu_only = [i["item"] for i in items if i["status"] == "needs-gpu"]
    print(f"\ngpu-check ({report.data['mode']}): {sum(i['status'] == 'pass' for i in items)} pass, "
          f"{len(bad)} failed ({', '.join(bad) or 'none'}), {len(gpu_only)} need a GPU"
          + (f" ({', '.join(gpu_only)})" if gpu_only else "")
          + f"; {report.data['elapsed_s']:.0f} s; report {out_dir}/gpu_report.md", flush=True)
    return 1 if bad else 0


def _log_tail(path, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="items: " + ", ".join(BY_NAME), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(BY_NAME), help="run these items only")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"total seconds (default {DEFAULT_BUDGET['cuda']:.0f} on CUDA, {DEFAULT_BUDGET['cpu']:.0f} on CPU)")
    ap.add_argument("--cpu", action="store_true", help="the CPU subset even where CUDA is present")
    ap.add_argument("--out", default=None, help="report folder (default $GPU_REPORT_DIR, else runs/gpu-check)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    ap.add_argument("--grace", type=float, default=GRACE_S,
                    help=f"seconds past an item's budget before its process is killed (default {GRACE_S:g})")
    ap.add_argument("--item-budget", nargs="+", default=[], metavar="ITEM=SECONDS",
                    help="override an item's own budget (e.g. train_step=300 on a slow GPU)")
    args = ap.parse_args()
    budgets = {}
    for text in args.item_budget:
        name, _, value = text.partition("=")
        try:
            budgets[name] = float(value)
        except ValueError:
            ap.error(f"--item-budget {text!r}: give ITEM=SECONDS")
        if name not in BY_NAME:
            ap.error(f"--item-budget {text!r}: unknown item {name!r} (items: {', '.join(BY_NAME)})")
    args.item_budget = budgets
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())

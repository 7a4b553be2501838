"""Is an auxiliary head still predicting something? Output statistics and the collapse rule.

The depth and density heads can be pushed by the adversarial gradient through F̂ to a constant
(the density to ≈ 0 within ten iterations once the discriminator starts to win), after which F̂
carries no information and the method silently becomes a worse M1. Each training step logs, per
head and domain, the mean and spread of the head's output beside those of its target; at every
log step `CollapseWatch` applies one rule:

    a head has COLLAPSED on a domain when, after it has once been healthy there, at `PATIENCE`
    consecutive log steps its output's std < REL × its target's std   (a constant), or
    |its output's mean| < REL × |its target's mean|   (≈ 0),      with REL = 0.01.

"Once healthy" makes it a change, not a start: the paper's N(0, 0.01) heads begin at ≈ 0 and
are not flagged for not having learned yet (the depth AbsRel and density MAE say that).
Only domains where the head has a target are judged (depth on the source; density on both).
The first iteration a head is flagged is recorded in the log as `collapse/<head>_<domain>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

HEALTH_PREFIX = "health/"  # step outputs that are diagnostics, not losses (plotted apart)
COLLAPSE_PREFIX = "collapse/"  # log key: first iteration a head was flagged on a domain
REL = 0.01
PATIENCE = 3
STAT_SUFFIXES = ("mean", "std", "target_mean", "target_std")


def stat_key(head: str, stat: str, domain: str) -> str:
    """'health/density_mean_src' etc.: the one spelling of a head statistic's log key."""
    return f"{HEALTH_PREFIX}{head}_{stat}_{domain}"


def head_stats(head: str, domain: str, output: torch.Tensor, target: torch.Tensor | None = None,
               valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Mean and std of a head's output (and of its target) over the batch's pixels, as tensors:
    masked sums, no boolean indexing, so no host sync in the training step. `valid` restricts both
    to pixels where the target is defined (none valid: zeros, which the rule never flags)."""
    weight = None if valid is None else valid.float()
    stats = dict(zip((stat_key(head, "mean", domain), stat_key(head, "std", domain)), _moments(output, weight)))
    if target is not None:
        stats.update(zip((stat_key(head, "target_mean", domain), stat_key(head, "target_std", domain)),
                         _moments(target, weight)))
    return stats


def _moments(x: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().float()
    if weight is None:
        return x.mean(), x.std(unbiased=False)
    n = weight.sum().clamp_min(1.0)
    mean = (x * weight).sum() / n
    return mean, (((x - mean) ** 2) * weight).sum().div(n).sqrt()


def judged(record: dict) -> list[tuple[str, str]]:
    """The (head, domain) pairs of a log record that carry both output and target statistics."""
    pairs = []
    for key in record:
        if key.startswith(HEALTH_PREFIX) and "_target_mean_" in key:
            head, domain = key[len(HEALTH_PREFIX):].split("_target_mean_")
            if stat_key(head, "mean", domain) in record and stat_key(head, "std", domain) in record:
                pairs.append((head, domain))
    return pairs


def looks_collapsed(record: dict, head: str, domain: str, rel: float = REL) -> bool:
    """The rule of this module's docstring for one log record (one step of the patience)."""
    mean, std = record[stat_key(head, "mean", domain)], record[stat_key(head, "std", domain)]
    t_mean, t_std = record[stat_key(head, "target_mean", domain)], record[stat_key(head, "target_std", domain)]
    if not all(math.isfinite(v) for v in (mean, std, t_mean, t_std)):
        return False
    constant = t_std > 0 and std < rel * t_std
    vanished = abs(t_mean) > 0 and abs(mean) < rel * abs(t_mean)
    return constant or vanished


class CollapseWatch:
    """Applies the collapse rule at each log record; remembers the first iteration per head."""

    def __init__(self, rel: float = REL, patience: int = PATIENCE):
        self.rel, self.patience = rel, patience
        self.streak: dict[str, int] = {}
        self.healthy: set[str] = set()  # names seen within the rule at least once
        self.flagged: dict[str, int] = {}  # "density_src" -> first iteration flagged

    @classmethod
    def from_log(cls, records: Iterable[dict], **kwargs) -> "CollapseWatch":
        """Rebuild the watch from a (resumed run's) log, so a continued run flags exactly once."""
        watch = cls(**kwargs)
        for record in records:
            watch.update(record)
        return watch

    def update(self, record: dict) -> list[str]:
        """Judge one log record; returns the names flagged for the first time (and adds
        `collapse/<name>` = iteration to the record for them)."""
        new = []
        for head, domain in judged(record):
            name = f"{head}_{domain}"
            if not looks_collapsed(record, head, domain, self.rel):
                self.healthy.add(name)
                self.streak[name] = 0
            elif name in self.healthy:
                self.streak[name] = self.streak.get(name, 0) + 1
            if self.streak.get(name, 0) >= self.patience and name not in self.flagged:
                self.flagged[name] = int(record["iteration"])
                record[f"{COLLAPSE_PREFIX}{name}"] = int(record["iteration"])
                new.append(name)
        for key, value in record.items():  # a log replayed on resume
            if key.startswith(COLLAPSE_PREFIX) and key[len(COLLAPSE_PREFIX):] not in self.flagged:
                self.flagged[key[len(COLLAPSE_PREFIX):]] = int(value)
        return new

    def warning(self, name: str, record: dict) -> str:
        """One line for the console."""
        head, domain = name.rsplit("_", 1)
        mean, std = record[stat_key(head, "mean", domain)], record[stat_key(head, "std", domain)]
        t_mean, t_std = record[stat_key(head, "target_mean", domain)], record[stat_key(head, "target_std", domain)]
        return (f"warning: the {head} head collapsed on the {'source' if domain == 'src' else 'target'} at iteration "
                f"{self.flagged[name]}: output mean {mean:.3g} ± {std:.3g} against its target's {t_mean:.3g} ± {t_std:.3g} "
                f"(rule: std < {self.rel:g}× the target's, or |mean| < {self.rel:g}× the target's, "
                f"{self.patience} log steps running, after being healthy)")


def collapse_summary(records: list[dict], trace_points: int = 20) -> dict:
    """For eval's report: the last logged statistics per (head, domain), the collapse flags of a
    training log (`log.jsonl` records), and a trace of each head's output mean against its
    target's at ~`trace_points` evenly spaced log steps ([iteration, mean, std, target mean])."""
    watch = CollapseWatch.from_log(dict(r) for r in records)
    last: dict[str, dict[str, float]] = {}
    trace: dict[str, list[list[float | None]]] = {}
    step = max(1, -(-len(records) // trace_points))
    picked = {id(r) for r in records[::step]} | ({id(records[-1])} if records else set())
    for record in records:
        for key, value in record.items():
            if not key.startswith(HEALTH_PREFIX):
                continue
            for stat in STAT_SUFFIXES:
                marker = f"_{stat}_"
                name = key[len(HEALTH_PREFIX):]
                if marker in name and not (stat == "mean" and "_target_mean_" in name) \
                        and not (stat == "std" and "_target_std_" in name):
                    head, domain = name.split(marker)
                    last.setdefault(f"{head}_{domain}", {})[stat] = float(value)
                    last[f"{head}_{domain}"]["iteration"] = int(record["iteration"])
        if id(record) in picked:
            for head_domain in last:
                head, domain = head_domain.rsplit("_", 1)
                if stat_key(head, "mean", domain) in record:
                    trace.setdefault(head_domain, []).append(
                        [int(record["iteration"])] + [record.get(stat_key(head, s, domain)) for s in ("mean", "std", "target_mean")])
    return {"heads": last, "collapsed": dict(watch.flagged), "rule": RULE_TEXT, "trace": trace}


RULE_TEXT = (f"collapsed = after once being healthy, output std < {REL:g}× the target's std, or |output mean| < "
             f"{REL:g}× |target mean|, at {PATIENCE} consecutive log steps")

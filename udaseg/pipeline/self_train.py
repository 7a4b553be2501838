"""`udaseg self-train`: the paper's stage 2 — cross-entropy on the refined target pseudo-labels.

Starts from the train checkpoint's weights (best on the target val or final, `train.select`) with a
fresh SGD optimizer and the same hyper-parameters; the poly denominator is `self_train.lr_horizon`
(the release keeps stage 1's 90,000); evaluated on the target val every `self_train.eval_every`
iterations, the best kept. Optionally keeps the source supervised losses. Set-up (`udaseg.engine`), the loop
and its callbacks (`udaseg.loop`), the schedule (`udaseg.schedule`) and DDP (`udaseg.distributed`)
are shared with `udaseg train`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from udaseg.checkpoint import check_compatible, load_checkpoint, pick_checkpoint
from udaseg.config import Config
from udaseg.data.base import read_channel
from udaseg.data.build import source_dataset, target_dataset
from udaseg.data.protocols import IGNORE
from udaseg.data.recipe_protocol import protocol_of
from udaseg.data.pseudo import PseudoLabelDataset, pseudo_label_subset
from udaseg.distributed import DistEnv, configure_cpu_threads, unwrap, wrap_ddp
from udaseg.engine import TrainParts, build_network, build_sgd, resume_or_refuse, set_rng_state, training_state
from udaseg.loop import LoopCallback, LoopSpec, run_loop
from udaseg.progress_plot import ProgressPlot
from udaseg.schedule import poly_horizon, poly_lr, sampled_batches, set_lr
from udaseg.errors import UdasegError
from udaseg.gmm import load_gmm
from udaseg.layout import STAGE_SELF_TRAIN, RunLayout, write_config
from udaseg.losses import berhu, weighted_cross_entropy
from udaseg.model import autocast, upsample
from udaseg.scoring import ValScorer
from udaseg.tensorboard import tensorboard_callbacks


class SelfTrainStep:
    def __init__(self, config: Config, parts: TrainParts, env: DistEnv, target_iter, source_iter=None):
        self.cfg, self.p, self.env = config, parts, env
        self.target_iter, self.source_iter = target_iter, source_iter

    def _forward(self, batch: dict, heads):
        x = batch["image"].to(self.env.device, non_blocking=True)
        with autocast(self.env.device, self.cfg.self_train.amp):
            return self.p.model(x, heads=heads), tuple(x.shape[-2:])

    def __call__(self, iteration: int) -> dict[str, torch.Tensor]:
        st, t, p, dev = self.cfg.self_train, self.cfg.train, self.p, self.env.device
        # the release keeps stage 1's MAX_ITERS as the denominator: self_train.lr_horizon
        set_lr(p.optimizer, poly_lr(st.lr, iteration, poly_horizon(st.iterations, st.lr_horizon), st.power))
        p.optimizer.zero_grad(set_to_none=True)
        tgt = next(self.target_iter)
        out, _ = self._forward(tgt, ("seg",))
        label = tgt["label"].to(dev, non_blocking=True).long()
        losses = {"seg_pseudo": weighted_cross_entropy(upsample(out.seg, tuple(label.shape[-2:])), label)}
        loss = losses["seg_pseudo"]
        if self.source_iter is not None:
            src = next(self.source_iter)
            out_s, size = self._forward(src, ("seg", "depth"))
            label_s = src["label"].to(dev, non_blocking=True).long()
            depth_s = src["depth"].to(dev, non_blocking=True)
            losses["seg_source"] = weighted_cross_entropy(upsample(out_s.seg, size), label_s, p.class_weights)
            loss = loss + t.lambda_seg * losses["seg_source"]
            if out_s.depth is not None:  # ADVENT's network has no depth head
                losses["depth"] = berhu(upsample(out_s.depth, size)[:, 0], depth_s, mask=depth_s > 0)
                loss = loss + t.lambda_dep * losses["depth"]
        loss.backward()
        p.optimizer.step()
        return {k: v.detach() for k, v in losses.items()}


def source_class_weights(config: Config, layout: RunLayout, device: torch.device) -> torch.Tensor | None:
    """The frequency CE weights from gmm.h5, when self-training keeps the weighted source loss."""
    if not (config.self_train.keep_source_loss and config.train.class_weights == "frequency"):
        return None
    if not layout.gmm_file.is_file():
        raise UdasegError(f"{layout.gmm_file}: not found; the weighted source loss needs it — run `udaseg fit-gmm` first")
    gmm = load_gmm(layout.gmm_file, protocol=config.experiment.protocol, input_size=config.data.source_size)
    return torch.as_tensor(gmm.ce_weights, dtype=torch.float32, device=device)


def kept_fraction(layout: RunLayout, pseudo: PseudoLabelDataset) -> float:
    """The fraction of target pixels the pseudo-labels keep: from pseudo/stats.json, or counted
    from the label files when they came from elsewhere."""
    if layout.pseudo_stats.is_file():
        return float(json.loads(layout.pseudo_stats.read_text())["kept_fraction"])
    kept = total = 0
    for sample in pseudo.target.samples:
        label = read_channel(pseudo.labels_dir / f"{sample.name}.png")
        kept += int((label != IGNORE).sum())
        total += label.numel()
    return kept / max(total, 1)


def check_pseudo_labels(config: Config, layout: RunLayout, pseudo: PseudoLabelDataset) -> None:
    """Refuse labels that keep almost nothing: the loss would be ~0 and the run would learn nothing."""
    floor = config.self_train.min_kept_fraction
    if floor <= 0:
        return
    kept = kept_fraction(layout, pseudo)
    if kept < floor:
        raise UdasegError(
            f"{layout.pseudo_labels_dir}: the pseudo-labels keep {kept:.2%} of the target pixels, below "
            f"self_train.min_kept_fraction = {floor:g}; the train checkpoint is confident almost nowhere — train it "
            "longer or lower pseudolabel.conf_threshold and re-run pseudolabel (or pass --min-kept 0 to train anyway)")


def run_self_train(config: Config, env: DistEnv, init_checkpoint: Path | None = None, root=None, runs=None,
                   resume: bool = False, progress: bool = True, workers: int | None = None,
                   callbacks: Sequence[LoopCallback] = ()) -> Path:
    """Run stage 2; returns the path of `self_train/checkpoint_final.pt`. `callbacks` join the
    loop's own (`udaseg.loop.LoopCallback`, e.g. `StopAfter(n)`)."""
    layout = RunLayout.for_config(config, runs)
    folder, st, t = layout.self_train, config.self_train, config.train
    torch.manual_seed(config.experiment.seed)
    num_classes = protocol_of(config).num_classes
    model = build_network(config, num_classes, env)
    optimizer = build_sgd(model, st)
    model = wrap_ddp(model, env, find_unused=True)
    parts = TrainParts(model, optimizer, class_weights=source_class_weights(config, layout, env.device))

    state = resume_or_refuse(folder, config, parts, env, resume, total=config.self_train.iterations)
    start = int(state["iteration"]) if state else 0
    loop_state = state.get("loop") if state else None
    if not resume:  # start from the train checkpoint (train.select: best on val, or final), with a fresh optimizer
        init = init_checkpoint or pick_checkpoint(layout.train, t.select)
        state = load_checkpoint(init, map_location=env.device)
        check_compatible(state, config, init)
        unwrap(model).load_state_dict(state["model"])

    workers = config.data.num_workers if workers is None else workers
    configure_cpu_threads(env, workers)
    seed = config.experiment.seed
    target = pseudo_label_subset(target_dataset(config, config.data.target_train_split, root),
                                 config.pseudolabel.max_images)  # the images pseudolabel labelled
    pseudo = PseudoLabelDataset(target, layout.pseudo_labels_dir)
    check_pseudo_labels(config, layout, pseudo)
    target_iter = sampled_batches(pseudo, st.batch_size, workers, seed + 2, start, env)
    source_iter = None
    if st.keep_source_loss:
        source_iter = sampled_batches(source_dataset(config, root), t.batch_size_source, workers, seed + 3, start, env)
    scorer = ValScorer(config, unwrap(model), env.device, root, workers, "self_train.eval_every") \
        if st.eval_every > 0 else None
    if resume:  # iter(loader) draws a base seed from the global RNG: restore it after, not before
        set_rng_state(state["rng"])
    if env.is_main:
        write_config(folder.path, config)

    spec = LoopSpec(
        out_dir=folder.path, total_iterations=st.iterations, start_iteration=start,
        checkpoint_every=st.checkpoint_every, log_every=st.log_every,
        images_per_step=st.batch_size + (t.batch_size_source if source_iter else 0),
        description=f"self-train {config.experiment.name}",
        step=SelfTrainStep(config, parts, env, target_iter, source_iter),
        state=lambda it: training_state(config, parts, it, STAGE_SELF_TRAIN),
        lrs=lambda: {"lr": optimizer.param_groups[0]["lr"]}, progress=progress,
        eval_every=st.eval_every, evaluate=scorer, loop_state=loop_state,
        callbacks=[ProgressPlot(folder.log, folder.progress_plot),
                   *tensorboard_callbacks(config, folder.path, env, model, root, start), *callbacks],
    )
    run_loop(spec, env)
    return folder.final

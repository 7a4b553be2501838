"""Stage 2 (`udaseg self-train`): cross-entropy on the refined target pseudo-labels.

Starts from the stage-1 weights with a fresh SGD optimizer and the same hyper-parameters
(DESIGN.md §5); optionally keeps the source supervised losses. The loop, checkpoints, resume
and logging are the stage-1 engine's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from udaseg.config import Config, to_toml
from udaseg.data.build import make_loader, source_dataset, target_dataset
from udaseg.data.protocols import get_protocol
from udaseg.data.pseudo import PseudoLabelDataset
from udaseg.engine import (DistEnv, LoopSpec, ResumableSampler, configure_cpu_threads, load_checkpoint, plot_progress,
                           poly_lr, run_loop, set_lr, set_rng_state, unwrap)
from udaseg.layout import RunLayout
from udaseg.losses import berhu, weighted_cross_entropy
from udaseg.model import model_from_config, normalize
from udaseg.stage1 import (TrainParts, autocast, check_compatible, checkpoint_state, load_gmm_for, refuse_existing,
                           resume_state, upsample)


class SelfTrainStep:
    def __init__(self, config: Config, parts: TrainParts, env: DistEnv, target_iter, source_iter=None):
        self.cfg, self.p, self.env = config, parts, env
        self.target_iter, self.source_iter = target_iter, source_iter

    def _forward(self, batch: dict, heads):
        x = normalize(batch["image"].to(self.env.device, non_blocking=True), self.cfg.model.backbone)
        with autocast(self.env.device, self.cfg.train.amp):
            return self.p.model(x, heads=heads), tuple(x.shape[-2:])

    def __call__(self, iteration: int) -> dict[str, torch.Tensor]:
        st, t, p, dev = self.cfg.self_train, self.cfg.train, self.p, self.env.device
        set_lr(p.optimizer, poly_lr(t.lr, iteration, st.iterations, t.power))
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
            losses["depth"] = berhu(upsample(out_s.depth, size)[:, 0], depth_s, mask=depth_s > 0)
            loss = loss + t.lambda_seg * losses["seg_source"] + t.lambda_dep * losses["depth"]
        loss.backward()
        p.optimizer.step()
        return {k: v.detach() for k, v in losses.items()}


def self_train(config: Config, env: DistEnv, init_checkpoint: Path | None = None, root=None, runs=None,
               resume: bool = False, progress: bool = True, workers: int | None = None) -> Path:
    """Run stage 2; returns the path of `self_train/checkpoint_final.pt`."""
    layout = RunLayout.for_config(config, runs)
    out, st, t = layout.self_train_dir, config.self_train, config.train
    torch.manual_seed(config.experiment.seed)
    num_classes = get_protocol(config.experiment.protocol).num_classes
    model = model_from_config(config.model, num_classes).to(env.device)
    if env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.param_groups(t.lr), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    weights = None
    if st.keep_source_loss and t.class_weights == "frequency":
        weights = torch.as_tensor(load_gmm_for(config, layout, required=True).ce_weights, dtype=torch.float32,
                                  device=env.device)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    parts = TrainParts(model, None, optimizer, None, None, weights)

    state = resume_state(out, config, parts, env) if resume else refuse_existing(out)
    start = int(state["iteration"]) if state else 0
    if not resume:  # start from the stage-1 weights, with a fresh optimizer
        init = init_checkpoint or layout.train_dir / "checkpoint_final.pt"
        state = load_checkpoint(init, map_location=env.device)
        check_compatible(state, config, init)
        unwrap(model).load_state_dict(state["model"])

    workers = config.data.num_workers if workers is None else workers
    configure_cpu_threads(env, workers)
    seed = config.experiment.seed
    target = target_dataset(config, config.data.target_train_split, root)
    pseudo = PseudoLabelDataset(target, layout.pseudo_labels_dir)
    target_loader = make_loader(pseudo, st.batch_size, workers, drop_last=True,
                                sampler=ResumableSampler(len(pseudo), seed + 2, start * st.batch_size, env.rank, env.world_size))
    source_iter = None
    if st.keep_source_loss:
        src = source_dataset(config, root)
        source_iter = iter(make_loader(src, t.batch_size_source, workers, drop_last=True,
                                       sampler=ResumableSampler(len(src), seed + 3, start * t.batch_size_source, env.rank, env.world_size)))
    if resume:  # iter(loader) draws a base seed from the global RNG: restore it after, not before
        set_rng_state(state["rng"])
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(to_toml(config))

    spec = LoopSpec(
        out_dir=out, total_iterations=st.iterations, start_iteration=start,
        checkpoint_every=t.checkpoint_every, log_every=t.log_every,
        images_per_step=st.batch_size + (t.batch_size_source if source_iter else 0),
        description=f"self-train {config.experiment.name}",
        step=SelfTrainStep(config, parts, env, iter(target_loader), source_iter),
        state=lambda it: checkpoint_state(config, parts, it, "self_train"),
        lrs=lambda: {"lr": optimizer.param_groups[0]["lr"]}, progress=progress,
        on_checkpoint=lambda: plot_progress(out / "log.jsonl", out / "progress.png"),
    )
    run_loop(spec, env)
    return out / "checkpoint_final.pt"

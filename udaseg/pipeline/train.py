"""`udaseg train`: the paper's stage 1 — source supervision + depth + density, adversarial alignment.

One iteration (read `Stage1Step.__call__` top to bottom):

    source:  CE_w(seg) + λ_dep·berHu(depth) + λ_bal·berHu(density, D_s)        backward
    target:  λ_adv·BCE(D(F̂_t), source) + λ_tar·berHu(density_t, D_t)          backward
    discriminator: BCE(D(F̂_s), source) + BCE(D(F̂_t), target), detached inputs  backward
    F̂ = entropy(softmax) × density, both upsampled to the input size

Ablations (paper Table 3): `m1` drops the density (F̂ = entropy, no D_s / D_t losses),
`source_only` keeps only the weighted CE; `m2` is the paper's full stage 1; `m2_entropy` keeps
M2's heads and density losses but feeds the discriminator the entropy alone (so the density
losses' own effect can be told from F̂'s); `oracle` trains on the labelled target split instead
of the source.

The published baselines as published (paper Table 1, `udaseg/baselines.py`): `advent` trains
ADVENT's network, its layer3 classifier with its own CE (λ_seg_aux) and a second discriminator on
that classifier's entropy (λ_adv_aux); `dada` trains DADA's network (depth-feature fusion) with F̂ =
entropy × predicted inverse depth; both with their papers' λs and lrs. `advent_entropy` and
`dada_simple` feed those discriminator inputs to the paper's network with the recipe's values.

F̂'s density factor reaches the generator live, as the release does, or detached
(`train.adv_density_grad`; dada's depth factor stays live, as DADA); each step logs the heads' output statistics beside their
targets' so a collapse is seen (udaseg/collapse.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from udaseg.config import Config, TrainConfig, data_root, resolve_under
from udaseg.data.build import source_dataset, target_dataset
from udaseg.data.depth import INVDEPTH_SCALE, MAX_DEPTH_M, invdepth_to_metres
from udaseg.data.recipe_protocol import protocol_of
from udaseg.collapse import HEALTH_PREFIX, head_stats
from udaseg.distributed import DistEnv, configure_cpu_threads, unwrap, wrap_ddp
from udaseg.engine import TrainParts, build_network, build_sgd, resume_or_refuse, set_rng_state, training_state
from udaseg.loop import LoopCallback, LoopSpec, run_loop
from udaseg.progress_plot import ProgressPlot
from udaseg.schedule import poly_horizon, poly_lr, sampled_batches, set_lr
from udaseg.errors import UdasegError
from udaseg.gmm import DepthGMM, load_gmm
from udaseg.layout import STAGE_TRAIN, RunLayout, write_config
from udaseg.losses import SOURCE_LABEL, TARGET_LABEL, adversarial_input, bce_adv, berhu, weighted_cross_entropy
from udaseg.baselines import with_baseline_values
from udaseg.checkpoint import check_compatible, load_checkpoint
from udaseg.model import Discriminator, architecture_for, autocast, channels_last, to_grid, upsample
from udaseg.model.advent import AdventDiscriminators
from udaseg.model.health import check_trainable
from udaseg.scoring import ValScorer
from udaseg.tensorboard import tensorboard_callbacks


def load_gmm_for(config: Config, layout: RunLayout, required: bool) -> DepthGMM | None:
    if not layout.gmm_file.is_file():
        if required:
            raise UdasegError(f"{layout.gmm_file}: not found; run `udaseg fit-gmm` with this recipe first")
        return None
    return load_gmm(layout.gmm_file, protocol=config.experiment.protocol, input_size=config.data.source_size)


def init_weights_path(config: Config, root: str | Path | None) -> Path | None:
    if not config.model.init_weights:
        return None
    path = Path(config.model.init_weights).expanduser()
    if not path.is_absolute():
        path = resolve_under(data_root(root, config.data.root), config.model.init_weights)
    if not path.is_file():
        raise UdasegError(f"{path}: pretrained weights not found (model.init_weights); give a local file — nothing is downloaded")
    return path


def build_parts(config: Config, env: DistEnv, root: str | Path | None, layout: RunLayout,
                imagenet: bool = True) -> TrainParts:
    """Network, optimizers, discriminator, GMM and class weights of the recipe's row; `imagenet=False`
    skips model.init_weights (a run started from a checkpoint overwrites every weight)."""
    t = config.train
    num_classes = protocol_of(config).num_classes
    needs_gmm = t.ablation in DENSITY_ABLATIONS or t.class_weights == "frequency" or t.head_targets == "normalized" \
        or t.adv_depth == "unit"
    gmm = load_gmm_for(config, layout, required=needs_gmm)
    model = build_network(config, num_classes, env, init_weights_path(config, root) if imagenet else None)
    if t.head_targets == "normalized":
        scale_heads(model, gmm, layout)
    check_trainable(model, config, env.device)
    optimizer = build_sgd(model, t)
    disc = optimizer_disc = None
    if t.ablation in ADVERSARIAL:
        two = architecture_for(config) == "advent"  # ADVENT: one discriminator per classifier
        disc = (AdventDiscriminators if two else Discriminator)(num_classes, ndf=t.disc_width).to(env.device)
        optimizer_disc = torch.optim.Adam(disc.parameters(), lr=t.lr_disc, betas=t.disc_betas)
        disc = wrap_ddp(disc, env, find_unused=two)
    # ablations leave the depth / density heads unused: DDP must not wait for their grads
    model = wrap_ddp(model, env, find_unused=t.ablation not in DENSITY_ABLATIONS)  # only these use every head
    weights = None
    if t.class_weights == "frequency":
        weights = torch.as_tensor(gmm.ce_weights, dtype=torch.float32, device=env.device)
    if gmm is not None:
        gmm.to(env.device)
    return TrainParts(model, optimizer, disc, optimizer_disc, gmm, weights)


def scale_heads(model, gmm: DepthGMM, layout: RunLayout) -> None:
    """train.head_targets = "normalized": the depth head predicts in units of the source median
    inverse depth and starts there; the density head in units of squash_max, starting at 0."""
    median = gmm.invdepth_median
    if not (median == median and median > 0):  # NaN or ≤ 0: a gmm.h5 without the statistic
        raise UdasegError(f"{layout.gmm_file}: has no source median inverse depth (written by an older fit-gmm); "
                          "re-run `udaseg fit-gmm`, or set train.head_targets=\"raw\"")
    net = unwrap(model)
    if getattr(net, "depth_head", None) is not None:
        net.depth_head.set_output_scale(median, start=median)
    if getattr(net, "density_head", None) is not None:
        net.density_head.set_output_scale(gmm.squash_max, start=0.0)


class Stage1Step:
    """One train iteration; the data iterators are consumed one batch each per call."""

    def __init__(self, config: Config, parts: TrainParts, env: DistEnv, source_iter, target_iter):
        self.cfg, self.t, self.p, self.env = config, config.train, parts, env
        self.source_iter, self.target_iter = source_iter, target_iter
        self.horizon = poly_horizon(self.t.iterations, self.t.lr_horizon)  # the release's MAX_ITERS
        self.heads, self.target_heads, self.adv_weight = ABLATIONS[self.t.ablation]
        net = unwrap(parts.model)
        # the berHu losses in the heads' own units (÷ 1 for the paper's raw heads): see train.head_targets
        self.depth_unit = float(net.depth_head.out_scale) if hasattr(net, "depth_head") else 1.0
        self.density_unit = float(net.density_head.out_scale) if hasattr(net, "density_head") else 1.0
        self.adv_unit = adversarial_unit(self.t, self.adv_weight, parts.gmm)

    def _inputs(self, batch: dict) -> torch.Tensor:
        return channels_last(batch["image"].to(self.env.device, non_blocking=True), self.env.device)

    def __call__(self, iteration: int) -> dict[str, torch.Tensor]:
        t, p, dev = self.t, self.p, self.env.device
        set_lr(p.optimizer, poly_lr(t.lr, iteration, self.horizon, t.power))
        p.optimizer.zero_grad(set_to_none=True)
        losses: dict[str, torch.Tensor] = {}

        # ---- source: supervised segmentation, depth and density
        src = next(self.source_iter)
        x_s = self._inputs(src)
        size_s = tuple(x_s.shape[-2:])
        label_s = src["label"].to(dev, non_blocking=True).long()
        with autocast(dev, t.amp):
            out_s = p.model(x_s, heads=self.heads)
        losses["seg"] = weighted_cross_entropy(upsample(out_s.seg, size_s), label_s, p.class_weights)
        loss_s = t.lambda_seg * losses["seg"]
        if "aux" in self.heads:  # ADVENT's layer3 classifier
            losses["seg_aux"] = weighted_cross_entropy(upsample(out_s.aux, size_s), label_s, p.class_weights)
            loss_s = loss_s + t.lambda_seg_aux * losses["seg_aux"]
        health: dict[str, torch.Tensor] = {}
        if "depth" in self.heads:
            depth_s = src["depth"].to(dev, non_blocking=True)
            pred_depth_s = upsample(out_s.depth, size_s)[:, 0]
            losses["depth"] = berhu(pred_depth_s, depth_s, mask=depth_s > 0)
            loss_s = loss_s + t.lambda_dep * losses["depth"] / self.depth_unit
            health.update(depth_health(pred_depth_s.detach(), depth_s))
            health.update(head_stats("depth", "src", pred_depth_s, depth_s, valid=depth_s > 0))
        if "density" in self.heads:
            grid_hw = tuple(out_s.seg.shape[-2:])
            d_s = p.gmm.source_target(out_s.seg.detach().argmax(1), to_grid(label_s, grid_hw), to_grid(depth_s, grid_hw),
                                      off_class=t.d_s_off_class)
            losses["density_src"] = berhu(out_s.density[:, 0].float(), d_s.float())
            loss_s = loss_s + t.lambda_bal * losses["density_src"] / self.density_unit
            health[f"{HEALTH_PREFIX}density_mae_src"] = (out_s.density[:, 0].detach().float() - d_s.float()).abs().mean()
            health.update(head_stats("density", "src", out_s.density[:, 0], d_s))
        loss_s.backward()

        if p.disc is not None:
            # ---- target: fool the discriminator, learn the target density
            tgt = next(self.target_iter)
            x_t = self._inputs(tgt)
            size_t = tuple(x_t.shape[-2:])
            with autocast(dev, t.amp):
                out_t = p.model(x_t, heads=self.target_heads)
            loss_t = 0.0
            if "density" in self.heads:
                d_t = p.gmm.target_target(out_t.seg.detach().argmax(1), out_t.depth.detach()[:, 0],
                                          nonpositive=t.d_t_nonpositive_depth)
                losses["density_tgt"] = berhu(out_t.density[:, 0].float(), d_t.float())
                loss_t = t.lambda_tar * losses["density_tgt"] / self.density_unit
                if self.env.distributed:  # the target depth only feeds D_t (detached); DDP needs a grad
                    loss_t = loss_t + 0.0 * out_t.depth.float().sum()
                health[f"{HEALTH_PREFIX}density_mae_tgt"] = (out_t.density[:, 0].detach().float() - d_t.float()).abs().mean()
                health.update(head_stats("density", "tgt", out_t.density[:, 0], d_t))
            if "depth" in self.target_heads:
                health.update(head_stats("depth", "tgt", out_t.depth[:, 0]))
            # F̂ = entropy × this map: 1 (ADVENT, M1), predicted inverse depth (DADA), predicted density (M2)
            live = self.adv_weight != "density" or t.adv_density_grad == "live"
            weight_s, weight_t = adversarial_weights(self.adv_weight, out_s, out_t, live=live)
            if self.adv_unit != 1.0:
                weight_s, weight_t = weight_s / self.adv_unit, weight_t / self.adv_unit
            f_t = adversarial_input(out_t.seg.float(), weight_t, size_t)
            disc = unwrap(p.disc)
            disc.requires_grad_(False)
            losses["adv"] = bce_adv(disc(f_t), SOURCE_LABEL)
            loss_t = loss_t + t.lambda_adv * losses["adv"]
            if "aux" in self.target_heads:  # ADVENT: the layer3 classifier's entropy, its own discriminator
                f_t_aux = adversarial_input(out_t.aux.float(), torch.ones_like(weight_t), size_t)
                losses["adv_aux"] = bce_adv(disc(f_t_aux, "aux"), SOURCE_LABEL)
                loss_t = loss_t + t.lambda_adv_aux * losses["adv_aux"]
            loss_t.backward()
            disc.requires_grad_(True)

            # ---- discriminator on detached maps
            set_lr(p.optimizer_disc, poly_lr(t.lr_disc, iteration, self.horizon, t.power))
            p.optimizer_disc.zero_grad(set_to_none=True)
            f_s = adversarial_input(out_s.seg.detach().float(), weight_s, size_s)
            loss_d_s = bce_adv(p.disc(f_s), SOURCE_LABEL) / 2
            loss_d_s.backward()
            loss_d_t = bce_adv(p.disc(f_t.detach()), TARGET_LABEL) / 2
            loss_d_t.backward()
            losses["disc"] = loss_d_s.detach() + loss_d_t.detach()
            if "aux" in self.target_heads:
                f_s_aux = adversarial_input(out_s.aux.detach().float(), torch.ones_like(weight_s), size_s)
                loss_a_s = bce_adv(p.disc(f_s_aux, "aux"), SOURCE_LABEL) / 2
                loss_a_s.backward()
                loss_a_t = bce_adv(p.disc(f_t_aux.detach(), "aux"), TARGET_LABEL) / 2
                loss_a_t.backward()
                losses["disc_aux"] = loss_a_s.detach() + loss_a_t.detach()
            p.optimizer_disc.step()
        p.optimizer.step()
        return {**{k: v.detach() for k, v in losses.items()}, **health}


# ablation -> (heads on the source, heads on the target, what multiplies the entropy map in F̂).
# advent: ADVENT's network and multi-level training (entropy alone, no depth; `aux` = its layer3
# classifier, with its own CE and discriminator); dada: DADA's network, its depth-aware input
# (entropy × predicted inverse depth, the source depth supervising it as privileged information);
# advent_entropy / dada_simple: those inputs on the paper's network; m1: seg + depth,
# entropy alone; m2: the paper's full train (entropy × predicted density). Heads whose output
# reaches no loss are not run: under DDP the reducer would wait for their gradients.
ABLATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    "source_only": (("seg",), (), None),
    "oracle": (("seg",), (), None),
    "advent": (("seg", "aux"), ("seg", "aux"), None),
    "dada": (("seg", "depth"), ("seg", "depth"), "depth"),
    "advent_entropy": (("seg",), ("seg",), None),
    "dada_simple": (("seg", "depth"), ("seg", "depth"), "depth"),
    "m1": (("seg", "depth"), ("seg",), None),
    "m2": (("seg", "depth", "density"), ("seg", "depth", "density"), "density"),
    "m2_entropy": (("seg", "depth", "density"), ("seg", "depth", "density"), None),
}
ADVERSARIAL = tuple(name for name, (_, target_heads, _) in ABLATIONS.items() if target_heads)
DENSITY_ABLATIONS = tuple(name for name, (heads, _, _) in ABLATIONS.items() if "density" in heads)


def adversarial_weights(head: str | None, out_s, out_t, live: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps that weight the entropy in F̂ for (source, target): the source one detached
    (it only trains the discriminator); the target one live, so the generator's adversarial loss
    also trains the head that makes it (the release), or detached (`train.adv_density_grad` for
    the density), so only the segmentation learns from the discriminator."""
    if head is None:
        return (torch.ones_like(out_s.seg[:, :1], dtype=torch.float32),
                torch.ones_like(out_t.seg[:, :1], dtype=torch.float32))
    weight_t = getattr(out_t, head).float()
    return getattr(out_s, head).detach().float(), weight_t if live else weight_t.detach()


def adversarial_unit(t: TrainConfig, factor: str | None, gmm: DepthGMM | None) -> float:
    """What F̂'s factor is divided by: 1 (the paper: raw 0..255 density, raw inverse depth), or the
    unit its own loss is taken in (train.adv_density / adv_depth = "unit": squash_max; the source
    median inverse depth), so F̂ and the head's loss weigh the head's output alike."""
    if gmm is None:
        return 1.0
    if factor == "density" and t.adv_density == "unit":
        return float(gmm.squash_max)
    if factor == "depth" and t.adv_depth == "unit":
        median = float(gmm.invdepth_median)
        if not (median == median and median > 0):
            raise UdasegError('train.adv_depth = "unit" needs the source median inverse depth in gmm.h5; '
                              're-run `udaseg fit-gmm`, or set train.adv_depth = "raw"')
        return median
    return 1.0


def depth_health(pred_invdepth: torch.Tensor, gt_invdepth: torch.Tensor) -> dict[str, torch.Tensor]:
    """How well the depth head agrees with the source depth: AbsRel in metres over valid pixels
    (the prediction clamped into the scored range, as eval does)."""
    valid = gt_invdepth > 0
    if not bool(valid.any()):
        return {}
    floor = INVDEPTH_SCALE / (MAX_DEPTH_M * 100.0 + 1.0)
    pred_m = invdepth_to_metres(pred_invdepth.float().clamp_min(floor))
    gt_m = invdepth_to_metres(gt_invdepth.float())
    return {f"{HEALTH_PREFIX}depth_absrel": ((pred_m - gt_m).abs() / gt_m)[valid].mean()}


def start_from(parts: TrainParts, config: Config, init: Path, device: torch.device) -> None:
    """`train --init`: the weights (and the discriminator, when the file has one and the row is
    adversarial) of a checkpoint — e.g. an imported release — with fresh optimizers, at iteration 0."""
    state = load_checkpoint(init, map_location=device)
    check_compatible(state, config, Path(init))
    unwrap(parts.model).load_state_dict(state["model"])
    if parts.disc is not None and state.get("disc"):
        try:
            unwrap(parts.disc).load_state_dict(state["disc"])
        except RuntimeError:
            raise UdasegError(f"{init}: its discriminator does not fit train.ablation = {config.train.ablation!r} / "
                              f"train.disc_width = {config.train.disc_width}; use the row and width it was trained with") from None


def run_train(config: Config, env: DistEnv, root: str | Path | None = None, runs: str | Path | None = None,
              resume: bool = False, progress: bool = True, workers: int | None = None,
              init: Path | None = None, callbacks: Sequence[LoopCallback] = ()) -> Path:
    """Run train (the paper's stage 1) as the recipe says — an advent / dada row with its paper's
    values (`with_baseline_values`) — optionally starting from the checkpoint `init`; returns the
    path of `train/checkpoint_final.pt`."""
    if init is not None and resume:
        raise UdasegError("--init starts a new run from a checkpoint, --continue resumes this run's own: pass one of them")
    config = with_baseline_values(config)
    layout = RunLayout.for_config(config, runs)
    folder = layout.train
    t = config.train
    torch.manual_seed(config.experiment.seed)
    parts = build_parts(config, env, root, layout, imagenet=init is None)
    state = resume_or_refuse(folder, config, parts, env, resume, total=t.iterations)
    if init is not None:
        start_from(parts, config, Path(init), env.device)
    start = int(state["iteration"]) if state else 0

    workers = config.data.num_workers if workers is None else workers
    configure_cpu_threads(env, workers)
    seed = config.experiment.seed
    if t.ablation == "oracle":  # the labelled target split takes the source's place
        src = target_dataset(config, config.data.target_train_split, root, labels=True)
    else:
        src = source_dataset(config, root)
    src_iter = sampled_batches(src, t.batch_size_source, workers, seed, start, env)
    tgt_iter = None
    if parts.disc is not None:
        tgt = target_dataset(config, config.data.target_train_split, root)
        tgt_iter = sampled_batches(tgt, t.batch_size_target, workers, seed + 1, start, env)
    if resume:  # iter(loader) draws a base seed from the global RNG: restore it after, not before
        set_rng_state(state["rng"])
    scorer = ValScorer(config, unwrap(parts.model), env.device, root, workers) if t.eval_every > 0 else None
    if env.is_main:
        write_config(folder.path, config)
    step = Stage1Step(config, parts, env, src_iter, tgt_iter)

    def lrs() -> dict[str, float]:
        values = {"lr": parts.optimizer.param_groups[0]["lr"]}
        if t.head_lr_mult != 1.0:  # the heads' group (the release has one group)
            values["lr_heads"] = parts.optimizer.param_groups[1]["lr"]
        if parts.optimizer_disc is not None:
            values["lr_disc"] = parts.optimizer_disc.param_groups[0]["lr"]
        return values

    spec = LoopSpec(
        out_dir=folder.path, total_iterations=t.iterations, start_iteration=start,
        checkpoint_every=t.checkpoint_every, log_every=t.log_every,
        images_per_step=t.batch_size_source + (t.batch_size_target if tgt_iter else 0),
        description=f"train {config.experiment.name} [{t.ablation}]",
        step=step, state=lambda it: training_state(config, parts, it, STAGE_TRAIN), lrs=lrs, progress=progress,
        eval_every=t.eval_every, evaluate=scorer, loop_state=state.get("loop") if state else None,
        callbacks=[ProgressPlot(folder.log, folder.progress_plot),
                   *tensorboard_callbacks(config, folder.path, env, parts.model, root, start), *callbacks],
    )
    run_loop(spec, env)
    return folder.final

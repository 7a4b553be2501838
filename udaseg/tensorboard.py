"""TensorBoard event files for `train` and `self-train`, when `tensorboard` is installed (extra `tb`).

The logger is a callback of the training loop (`udaseg.loop.LoopCallback`) on rank 0:

- every scalar of each `log.jsonl` record goes in under its own name (`seg`, `adv`, `lr`,
  `images_per_s`, `val_miou`, ...) at the record's iteration and wall time;
- at every checkpoint, a few target images (the val split when it has labels, else train) with
  the model's prediction and depth: one panel per image, image | ground truth | prediction | depth.

Events go to `<stage folder>/tensorboard/` (`tensorboard --logdir runs/`). A resumed run purges
the events past its checkpoint's iteration, like `log.jsonl`. Without the package, or with
`UDASEG_TENSORBOARD=0`, nothing is written and nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from udaseg.config import Config
from udaseg.loop import LoopCallback
from udaseg.progress import console

NUM_IMAGES = 3
SKIP_KEYS = ("iteration", "time")


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (raises without `tensorboard`)
    except ImportError:
        return False
    return True


class TensorBoardLogger(LoopCallback):
    """`log(record)`, `checkpoint(iteration)`, `close()` — what `run_loop` calls."""

    def __init__(self, log_dir: Path, config: Config, model: torch.nn.Module, device: torch.device,
                 root=None, start_iteration: int = 0, num_images: int = NUM_IMAGES):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        # a resumed run drops the events after its checkpoint's iteration (log.jsonl keeps ≤ it too)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start_iteration + 1 if start_iteration > 0 else None)
        self.config, self.model, self.device, self.root = config, model, device, root
        self.num_images = num_images
        self._samples: list[dict] | None = None

    # -- scalars
    def on_log(self, record: dict) -> None:
        step = int(record["iteration"])
        walltime = record.get("time")
        for key, value in record.items():
            if key in SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(key, float(value), step, walltime=walltime)
        self.writer.flush()

    # -- images at checkpoint time
    def _target_samples(self) -> list[dict]:
        if self._samples is None:
            from udaseg.data.build import target_dataset
            from udaseg.errors import UdasegError

            cfg = self.config
            self._samples = []
            for split, labels in ((cfg.data.target_val_split, True), (cfg.data.target_train_split, False)):
                try:
                    dataset = target_dataset(cfg, split, self.root, labels=labels, label_size=cfg.data.target_size)
                except (UdasegError, ValueError, TypeError):
                    continue
                picks = np.linspace(0, len(dataset) - 1, min(self.num_images, len(dataset))).round().astype(int)
                self._samples = [dataset[int(i)] for i in sorted(set(picks.tolist()))]
                break
        return self._samples

    def on_checkpoint(self, iteration: int) -> None:
        try:
            samples = self._target_samples()
        except Exception as err:  # images are a nicety: a broken file must not stop training
            console.print(f"[yellow]tensorboard:[/] no target images ({err})", highlight=False)
            self._samples = []
            samples = []
        if samples:
            for i, panel in enumerate(self._panels(samples)):
                self.writer.add_image(f"target/{i}_{samples[i]['name']}", panel, iteration, dataformats="HWC")
        self.writer.flush()

    @torch.no_grad()
    def _panels(self, samples: list[dict]) -> list[np.ndarray]:
        from udaseg.data.palette import colorize
        from udaseg.data.recipe_protocol import protocol_of
        from udaseg.distributed import unwrap
        from udaseg.inference import colorize_depth
        from udaseg.model import autocast, channels_last, upsample

        protocol = protocol_of(self.config)
        net = unwrap(self.model)
        modes = [(m, m.training) for m in net.modules()]
        net.eval()  # running statistics, no updates; restored below so training is unchanged
        try:
            images = torch.stack([s["image"] for s in samples]).to(self.device)
            x = channels_last(images, self.device)
            with autocast(self.device, self.config.inference.amp):
                out = net(x, heads=("seg", "depth"))
            hw = tuple(images.shape[-2:])
            pred = upsample(out.seg, hw).argmax(1).to(torch.uint8).cpu().numpy()
            depth = None if out.depth is None else upsample(out.depth, hw)[:, 0].cpu().numpy()  # ADVENT's: none
        finally:
            for m, mode in modes:
                m.training = mode
        panels = []
        for j, s in enumerate(samples):
            parts = [s["image"].permute(1, 2, 0).numpy()]
            if "label" in s:
                parts.append(colorize(s["label"].numpy(), protocol))
            parts.append(colorize(pred[j], protocol))
            if depth is not None:
                parts.append(colorize_depth(depth[j]))
            panels.append(np.concatenate(parts, axis=1))
        return panels

    def on_end(self, iteration: int | None = None) -> None:
        self.writer.close()


def tensorboard_callbacks(config: Config, folder: Path, env, model: torch.nn.Module, root=None,
                          start_iteration: int = 0) -> list[TensorBoardLogger]:
    """The loop callbacks that write TensorBoard events for the stage folder: one logger on rank 0
    when TensorBoard is installed (and $UDASEG_TENSORBOARD is not off); none otherwise."""
    if not env.is_main or os.environ.get("UDASEG_TENSORBOARD", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    if not tensorboard_available():
        return []
    from udaseg.layout import TrainDir

    return [TensorBoardLogger(TrainDir(Path(folder)).tensorboard, config, model, env.device, root, start_iteration)]

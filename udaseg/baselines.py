"""The published baselines' own training values, for the ablation rows `advent` and `dada`.

A row named after a paper trains that paper's network (`udaseg.model.architecture_for`) with
that paper's loss weights and learning rates, whatever the recipe says for the paper's own
method (`udaseg train` applies them: `with_baseline_values`); the recipe keeps everything else
(data, sizes, schedule length, base lr, backbone, BatchNorm mode, the demo's head scaling). `train.baseline_values = "recipe"` keeps the
recipe's values instead. Sources (read 2026-12-03):

    ADVENT  valeoai/ADVENT advent/domain_adaptation/config.py and scripts/configs/advent.yml:
            MULTI_LEVEL = True, LAMBDA_SEG_MAIN 1.0, LAMBDA_SEG_AUX 0.1, LAMBDA_ADV_MAIN 0.001,
            LAMBDA_ADV_AUX 0.0002, LEARNING_RATE_D 1e-4 (Adam, betas (0.9, 0.99)); the classifiers
            (`layer5`, `layer6`) at 10× the backbone's lr (`optim_parameters`); unweighted CE
            (`loss_calc`); discriminators on the entropy maps alone (`prob_2_entropy`).
    DADA    valeoai/DADA dada/domain_adaptation/config.py: LAMBDA_SEG_MAIN 1.0,
            LAMBDA_DEPTH_MAIN 0.001, LAMBDA_ADV_MAIN 0.001, LEARNING_RATE_D 1e-4 (Adam, betas
            (0.9, 0.99)), MULTI_LEVEL False; `get_10x_lr_params` puts `layer6`, `enc4_1..3` and
            `dec4` (classifier, depth encoder, fusion) at 10× the backbone's lr; unweighted CE;
            the discriminator sees entropy × predicted inverse depth (train_UDA.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

BASELINE_VALUES: dict[str, dict[str, Any]] = {
    "advent": {
        "lambda_seg": 1.0, "lambda_seg_aux": 0.1, "lambda_adv": 0.001, "lambda_adv_aux": 0.0002,
        "lr_disc": 1e-4, "disc_betas": (0.9, 0.99), "head_lr_mult": 10.0, "aux_head_lr_mult": 1.0,
        "class_weights": "none",
    },
    "dada": {
        "lambda_seg": 1.0, "lambda_dep": 0.001, "lambda_adv": 0.001,
        "lr_disc": 1e-4, "disc_betas": (0.9, 0.99), "head_lr_mult": 10.0, "aux_head_lr_mult": 1.0,
        "class_weights": "none",
    },
}


def with_baseline_values(config):
    """The recipe `train` runs: an advent / dada row with its paper's values in `[train]` (what
    the stage writes to config.toml and its checkpoints), unless train.baseline_values = "recipe".
    Applied once, by the training stage, so a recipe stays what its file and --set say."""
    values = BASELINE_VALUES.get(config.train.ablation, {}) if config.train.baseline_values == "published" else {}
    if not values:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **values))

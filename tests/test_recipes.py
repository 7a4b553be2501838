"""Every shipped recipe resolves to exactly the values it resolved to before the sections were
reshaped (tests/fixtures/resolved_recipes.json: each recipe's resolved config.toml, written by
main at cd82404, the last commit before the change; own5's entry then took the demo's head settings,
a recipe change of its own), key by key, with the keys that moved mapped to where they were."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from udaseg.config import ConfigError, config_from_dict, load_config, to_toml, upgrade_recipe

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests" / "fixtures" / "resolved_recipes.json").read_text())

# new key -> the key whose value it must have (self-training had stage 1's optimizer; inference read
# pseudolabel.batch_size, data.num_workers and train.amp). Written out here, not taken from udaseg.
MOVED = {
    "inference.batch_size": "pseudolabel.batch_size",
    "inference.workers": "data.num_workers",
    "inference.amp": "train.amp",
    "self_train.lr": "train.lr",
    "self_train.momentum": "train.momentum",
    "self_train.weight_decay": "train.weight_decay",
    "self_train.power": "train.power",
    "self_train.head_lr_mult": "train.head_lr_mult",
    "self_train.aux_head_lr_mult": "train.aux_head_lr_mult",
    "self_train.aux_head_decay_mult": "train.aux_head_decay_mult",
    "self_train.amp": "train.amp",
    "self_train.checkpoint_every": "train.checkpoint_every",
    "self_train.log_every": "train.log_every",
}
GONE = {"pseudolabel.batch_size"}  # its value lives on as inference.batch_size
# keys added after the fixture was written, by features of their own, with the value every recipe has
ADDED = {"pseudolabel.verify_first_batch": True}


def flat(resolved: dict) -> dict:
    return {f"{section}.{key}": value for section, values in resolved.items() for key, value in values.items()}


def test_the_fixture_covers_every_shipped_recipe():
    assert sorted(BEFORE) == sorted(p.name for p in (ROOT / "stages").glob("*.toml"))


@pytest.mark.parametrize("recipe", sorted(BEFORE))
def test_a_shipped_recipe_resolves_to_the_same_values(recipe):
    before = flat(BEFORE[recipe])
    now = flat(tomllib.loads(to_toml(load_config(ROOT / "stages" / recipe))))
    assert set(now) == (set(before) - GONE) | set(MOVED) | set(ADDED)
    for key, value in now.items():
        assert value == (ADDED[key] if key in ADDED else before[MOVED.get(key, key)]), key


@pytest.mark.parametrize("recipe", sorted(BEFORE))
def test_an_older_embedded_recipe_is_read_with_its_old_meaning(recipe):
    """A checkpoint written before embeds the old sections; eval / predict read it as it meant then."""
    old = BEFORE[recipe]
    assert config_from_dict(upgrade_recipe(old)) == load_config(ROOT / "stages" / recipe)


def test_a_recipe_spelling_a_moved_key_is_told_where_it_went(tmp_path):
    recipe = tmp_path / "old.toml"
    recipe.write_text("[pseudolabel]\nbatch_size = 4\n")
    with pytest.raises(ConfigError, match=r"old.toml: pseudolabel.batch_size is now inference.batch_size; "
                                          r"move it to \[inference\]$"):
        load_config(recipe)


def test_self_training_lr_is_its_own():
    config = load_config(ROOT / "stages" / "demo.toml", ["train.lr=0.5"])
    assert config.self_train.lr == 2.5e-3 and config.train.lr == 0.5

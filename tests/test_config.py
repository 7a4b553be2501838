import ast
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from udaseg.config import Config, ConfigError, load_config, parse_override, to_toml

STAGES = Path(__file__).resolve().parents[1] / "stages"


@pytest.mark.parametrize("recipe", sorted(STAGES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_recipe_loads_and_round_trips(recipe, tmp_path):
    config = load_config(recipe)
    assert isinstance(config, Config)
    again = tmp_path / "resolved.toml"
    again.write_text(to_toml(config))
    assert load_config(again) == config


def test_paper_values():
    c16 = load_config(STAGES / "synthia2cityscapes16.toml")
    assert (c16.train.lambda_seg, c16.train.lambda_dep, c16.train.lambda_bal, c16.train.lambda_adv,
            c16.train.lambda_tar, c16.train.lr_disc) == (1.0, 0.005, 0.01, 0.05, 0.05, 1e-3)
    assert (c16.train.lr, c16.train.momentum, c16.train.weight_decay, c16.train.power) == (2.5e-4, 0.9, 5e-4, 0.9)
    # the release's schedule: 90K stage-1 iterations (Q1 = 54K is the best-on-val pick), 30K self-training
    assert (c16.train.iterations, c16.train.lr_horizon, c16.self_train.iterations) == (90000, 90000, 30000)
    assert (c16.pseudolabel.n_b0, c16.pseudolabel.n_b1, c16.pseudolabel.conf_threshold) == (50, 4950, 0.9)
    assert c16.data.source_size == (1280, 760) and c16.gmm.components == 5
    c7low = load_config(STAGES / "synthia2cityscapes7_low.toml")
    assert c7low.train.lambda_dep == 0.001 and c7low.data.target_size == (640, 320)
    assert (c7low.pseudolabel.n_b0, c7low.pseudolabel.n_b1) == (100, 900)
    m7 = load_config(STAGES / "synthia2mapillary7.toml")
    assert (m7.train.lambda_bal, m7.train.lambda_dep, m7.train.lambda_adv, m7.train.lambda_tar,
            m7.train.lr_disc) == (0.005, 1e-4, 1e-3, 1e-3, 1e-4)
    assert m7.train.class_weights == "none" and m7.data.target_format == "mapillary"
    assert (m7.pseudolabel.n_b0, m7.pseudolabel.n_b1) == (50, 50)


def test_overrides_are_typed():
    config = load_config(STAGES / "demo.toml", ["train.iterations=7", "data.source_size=[64, 32]",
                                               "model.backbone=light_resnet18", "train.amp=false"])
    assert config.train.iterations == 7 and config.data.source_size == (64, 32)
    assert config.train.amp is False
    with pytest.raises(ConfigError, match="train.iterations"):
        load_config(None, ["train.iterations=1.5"])
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=3"])
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(None, ["model.backbone=resnet9000"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("iterations=3")


def test_unknown_keys_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\niteratons = 5\n")
    with pytest.raises(ConfigError, match=r"unknown key train\.iteratons"):
        load_config(bad)
    bad.write_text("[trian]\niterations = 5\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown key train.nope"):
        load_config(None, ["train.nope=1"])
    bad.write_text("[data]\nsource_size = [1, 2, 3]\n")
    with pytest.raises(ConfigError, match="data.source_size"):
        load_config(bad)
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("demo, paper", [("demo", "synthia2cityscapes7"), ("demo16", "synthia2cityscapes16")])
def test_demo_recipes_keep_the_paper_method(demo, paper):
    """The CPU demo recipes shrink sizes, widths and iterations, never the method of their protocol."""
    d, p = load_config(STAGES / f"{demo}.toml"), load_config(STAGES / f"{paper}.toml")
    assert d.experiment.protocol == p.experiment.protocol
    for field in ("lambda_seg", "lambda_dep", "lambda_bal", "lambda_adv", "lambda_tar", "lr_disc", "disc_betas",
                  "class_weights", "momentum", "weight_decay", "power"):
        assert getattr(d.train, field) == getattr(p.train, field), field
    for field in ("conf_threshold", "connectivity", "n_b0", "n_b1", "thresholds_size"):
        assert getattr(d.pseudolabel, field) == getattr(p.pseudolabel, field), field
    assert (d.gmm.components, d.gmm.covariance, d.gmm.squash_scale, d.gmm.squash_max) == \
        (p.gmm.components, p.gmm.covariance, p.gmm.squash_scale, p.gmm.squash_max)


def test_protocol_typo_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"experiment.protocol = 'cityscapes19': unknown class protocol; choose one of"):
        load_config(None, ["experiment.protocol=cityscapes19"])


def test_protocol_typo_through_the_cli_exits_1_without_traceback():
    from typer.testing import CliRunner

    from udaseg.cli import app

    result = CliRunner().invoke(app, ["train", "--set", "experiment.protocol=cityscapes19"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: experiment.protocol = 'cityscapes19'"), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("override, message", [
    ("train.iterations=0", "train.iterations = 0: must be > 0"),
    ("train.batch_size_source=-1", "train.batch_size_source = -1: must be > 0"),
    ("gmm.components=0", "gmm.components = 0: must be ≥ 1"),
    ("pseudolabel.conf_threshold=1.5", "pseudolabel.conf_threshold = 1.5: must be in [0, 1]"),
    ("self_train.min_kept_fraction=-0.1", "self_train.min_kept_fraction = -0.1: must be in [0, 1]"),
    ("data.source_size=[0, 10]", "data.source_size = (0, 10): must be positive (width, height)"),
    ("train.momentum=1.0", "train.momentum = 1.0: must be in [0, 1)"),
])
def test_ranges_are_checked_when_the_recipe_loads(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def _sections_of(expr: ast.AST, aliases: dict[str, set[str]], sections: set[str]) -> set[str]:
    """The config sections `expr` may be: `<x>.train` is [train]; a name bound to a section (or a
    parameter annotated with its class) is that section."""
    if isinstance(expr, ast.Attribute) and expr.attr in sections:
        return {expr.attr}
    return aliases.get(ast.unparse(expr), set())


def section_reads(tree: ast.Module, classes: dict[str, str]) -> set[str]:
    """Every `section.key` a module reads: `config.train.lr`, `t.lr` after `t = config.train` or with
    `t: TrainConfig`, `getattr(config.train, "select")`. Aliases hold within a function, or a class
    (`self.t = config.train` in __init__, read in __call__), or the module's top level."""
    sections, by_class = set(classes), {cls: name for name, cls in classes.items()}
    found: set[str] = set()
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    scopes = [list(ast.walk(n)) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    scopes.append([n for stmt in top for n in ast.walk(stmt)])
    for nodes in scopes:
        aliases: dict[str, set[str]] = {}
        for _ in range(2):  # aliases of aliases
            for node in nodes:
                if isinstance(node, ast.arg) and node.annotation is not None:
                    names = {by_class[c] for c in by_class if re.search(rf"\b{c}\b", ast.unparse(node.annotation))}
                    if names:
                        aliases.setdefault(node.arg, set()).update(names)
                if isinstance(node, ast.Assign):
                    pairs = []
                    for target in node.targets:
                        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                            pairs += list(zip(target.elts, node.value.elts))
                        else:
                            pairs.append((target, node.value))
                    for target, value in pairs:
                        got = _sections_of(value, aliases, sections)
                        if got:
                            aliases.setdefault(ast.unparse(target), set()).update(got)
        for node in nodes:
            if isinstance(node, ast.Attribute):
                found |= {f"{s}.{node.attr}" for s in _sections_of(node.value, aliases, sections)}
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant):
                found |= {f"{s}.{node.args[1].value}" for s in _sections_of(node.args[0], aliases, sections)}
    return found


def package_reads() -> set[str]:
    hints = typing.get_type_hints(Config)
    classes = {f.name: hints[f.name].__name__ for f in dataclasses.fields(Config)}
    return {key for p in (Path(__file__).resolve().parents[1] / "udaseg").rglob("*.py") if p.name != "config.py"
            for key in section_reads(ast.parse(p.read_text()), classes)}


def test_every_recipe_key_is_read_by_the_package():
    """A key nothing reads is a setting that silently does nothing (model.output_stride did). The
    read must name the key's own section: `.batch_size` of another section does not count."""
    config, reads = Config(), package_reads()
    unread = [f"{s.name}.{k.name}" for s in dataclasses.fields(config) for k in dataclasses.fields(getattr(config, s.name))
              if f"{s.name}.{k.name}" not in reads]
    assert unread == [], f"read nowhere: {unread}"


def test_the_key_reader_tells_sections_apart():
    tree = ast.parse('''
def f(config, other: EvalConfig):
    st, t = config.self_train, config.train
    a = st.lr + t.power + config.inference.batch_size + other.num_figure_samples
    return getattr(config.train, "select")
class Step:
    def __init__(self, config):
        self.t = config.train
    def __call__(self):
        return self.t.lambda_adv, self.x.batch_size
''')
    classes = {"train": "TrainConfig", "self_train": "SelfTrainConfig", "inference": "InferenceConfig", "eval": "EvalConfig"}
    assert section_reads(tree, classes) == {"self_train.lr", "train.power", "inference.batch_size",
                                            "eval.num_figure_samples", "train.select", "train.lambda_adv"}


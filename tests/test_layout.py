"""udaseg/layout.py names every artifact: the paths derived from a checkpoint, the export file, the
checkpoint kinds and stage tags, and no other module spells one of its file names."""

from __future__ import annotations

import ast
from pathlib import Path

import udaseg.layout as layout
from udaseg.layout import RunLayout, checkpoint_kind, stage_tag

PACKAGE = Path(__file__).resolve().parents[1] / "udaseg"


def test_a_checkpoint_knows_its_run(tmp_path):
    run = RunLayout(tmp_path / "runs" / "m2_s0")
    run.train.path.mkdir(parents=True)
    run.train.final.write_bytes(b"")
    assert RunLayout.of_checkpoint(run.train.final).gmm_file == (tmp_path / "runs/m2_s0/gmm/gmm.h5").resolve()
    assert RunLayout.of_checkpoint(run.self_train.best).root == run.root.resolve()
    link = tmp_path / "model.pt"  # a link into a run finds that run's gmm.h5
    link.symlink_to(run.train.final)
    assert RunLayout.of_checkpoint(link).gmm_file == run.gmm_file.resolve()
    assert run.export_file("onnx") == run.root / "export" / "model.onnx"
    assert run.export_file("torchscript") == run.root / "export" / "model.torchscript.pt"


def test_checkpoint_kinds_and_stage_tags():
    assert [checkpoint_kind(f"x/{n}") for n in ("checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_latest.pt",
                                              "mine.pt")] == ["best", "final", "latest", "file"]
    assert (stage_tag("stage1"), stage_tag("train"), stage_tag("self_train"), stage_tag(None)) == \
        ("train", "train", "self_train", None)
    assert (RunLayout(Path("r")).train.path.name, RunLayout(Path("r")).self_train.path.name) == \
        (layout.STAGE_TRAIN, layout.STAGE_SELF_TRAIN)


def artifact_names() -> set[str]:
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v}
    return names | {layout.TENSORBOARD_DIR, layout.EXPORT_DIR} | set(layout.EXPORT_SUFFIXES.values())


def spelled(path: Path, names: set[str]) -> list[str]:
    """String constants of `path` (docstrings and f-string text included) that are an artifact name."""
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            hits.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    return hits


def test_no_module_but_layout_spells_an_artifact_name():
    names = artifact_names()
    assert {"gmm.h5", "confusion.png", "samples.png", "checkpoint_best.pt", "export", "tensorboard"} <= names
    skip = {PACKAGE / "layout.py", PACKAGE / "cli.py"}  # cli.py: the `export` command's name
    hits = [h for p in sorted(PACKAGE.rglob("*.py")) if p not in skip for h in spelled(p, names)]
    assert hits == []

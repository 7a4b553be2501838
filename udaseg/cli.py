"""`udaseg`: one subcommand per pipeline stage, each reading and writing artifacts on disk."""

from __future__ import annotations

import typer

from udaseg.commands import check_data, compare, evaluate, fit_gmm, pseudolabel, self_train, synth, train
from udaseg.commands import export, import_model, predict

app = typer.Typer(
    name="udaseg",
    help=(
        "Depth-aware unsupervised domain adaptation for semantic segmentation.\n\n"
        "Pipeline: synth | check-data -> fit-gmm -> train -> pseudolabel --refine -> self-train -> eval -> compare\n\n"
        "Use the adapted model: predict (any images) | export (TorchScript / ONNX)\n\n"
        "Published models: import-model (the authors', ADVENT's, DADA's .pth) -> eval | predict | self-train"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

app.command("synth")(synth.synth)
app.command("check-data")(check_data.check_data)
app.command("fit-gmm")(fit_gmm.fit_gmm)
app.command("train")(train.train)
app.command("pseudolabel")(pseudolabel.pseudolabel)
app.command("self-train")(self_train.self_train)
app.command("eval")(evaluate.evaluate)
app.command("compare")(compare.compare)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("import-model")(import_model.import_model)

if __name__ == "__main__":
    app()

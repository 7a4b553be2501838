"""The stages, one module per command: fit_gmm, train, pseudolabel, self_train, evaluate, compare,
and for using the adapted model, predict and export.

No stage imports another; what they share lives in the package root (engine, loop, schedule,
distributed, checkpoint, layout, progress, inference) or in udaseg.model / udaseg.data.
"""

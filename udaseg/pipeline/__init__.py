"""The stages, one module per command: fit_gmm, train, pseudolabel, self_train, evaluate, compare.

No stage imports another; what they share lives in the package root (engine, checkpoint,
layout, progress) or in udaseg.model / udaseg.data.
"""

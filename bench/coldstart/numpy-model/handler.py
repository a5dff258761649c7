# A handler that imports numpy and builds a model when it is imported: a
# least-squares fit on synthetic data, as a stand-in for loading weights.
import numpy as np

_rng = np.random.default_rng(0)
_X = _rng.normal(size=(2000, 64))
_w_true = _rng.normal(size=64)
_y = _X @ _w_true + _rng.normal(scale=0.1, size=2000)
WEIGHTS, *_ = np.linalg.lstsq(_X, _y, rcond=None)


def handle(req):
    x = np.full(64, float(len(req)))
    return f"{float(x @ WEIGHTS):.3f}"

"""Recognises hand-written digits (8x8 grey-scale images, 64 numbers 0-16).

The model is trained when the module is imported, once per replica; workers
forked after the import share it. POST {"pixels": [64 numbers]} to get a
prediction, or an empty body to classify a sample from the test set.
"""

import json
import time

from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

_started = time.time()
_digits = load_digits()  # ships with scikit-learn: no download
_train_x, _test_x, _train_y, _test_y = train_test_split(
    _digits.data, _digits.target, test_size=0.25, random_state=0
)
MODEL = RandomForestClassifier(n_estimators=300, random_state=0).fit(_train_x, _train_y)
ACCURACY = float(MODEL.score(_test_x, _test_y))
LOADED_AT = time.time()
TRAIN_SECONDS = LOADED_AT - _started


def handle(event, context):
    body = event.body.decode() if event.body else ""
    if body.strip():
        try:
            pixels = json.loads(body)["pixels"]
        except (ValueError, KeyError, TypeError):
            return {"statusCode": 400, "body": {"error": 'body must be JSON: {"pixels": [64 numbers]}'}}
        if not isinstance(pixels, list) or len(pixels) != 64:
            return {"statusCode": 400, "body": {"error": "pixels: must be a list of 64 numbers"}}
        expected = None
    else:
        pixels, expected = list(_test_x[0]), int(_test_y[0])
    started = time.time()
    digit = int(MODEL.predict([pixels])[0])
    return {
        "statusCode": 200,
        "body": {
            "digit": digit,
            "expected": expected,
            "model_accuracy": round(ACCURACY, 4),
            "model_loaded_at": LOADED_AT,
            "model_train_seconds": round(TRAIN_SECONDS, 3),
            "predict_seconds": round(time.time() - started, 4),
        },
    }

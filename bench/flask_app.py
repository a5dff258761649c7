"""The same handler served the way OpenFaaS's python3-http template serves it
(Flask behind waitress, the template's index.py), for comparison."""

import os
import sys

from flask import Flask, request
from waitress import serve

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "echo-http"))
import handler  # noqa: E402

app = Flask(__name__)


class Event:
    def __init__(self):
        self.body = request.get_data()
        self.headers = request.headers
        self.method = request.method
        self.query = request.args
        self.path = request.path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def format_response(res):
    if res is None:
        return ("", 200)
    if isinstance(res, dict):
        return (str(res.get("body", "")), res.get("statusCode", 200), res.get("headers", {}))
    return res


@app.route("/", defaults={"path": ""}, methods=["GET", "PUT", "POST", "PATCH", "DELETE"])
@app.route("/<path:path>", methods=["GET", "PUT", "POST", "PATCH", "DELETE"])
def call_handler(path):
    return format_response(handler.handle(Event(), Context()))


if __name__ == "__main__":
    serve(app, host="127.0.0.1", port=int(sys.argv[1]))

"""Scale-from-zero timings, printed as ratios measured in one run.

usage: measure.py GRAPHENE_URL TOKEN PYTHON HANDLER_DIR

- scratch: start the handler's Python (its own venv), import the handler (numpy
  and the model), answer one call: what a cold start costs without a warm parent.
- graphene: a call to a function scaled to zero, until its response (a worker
  forked from the warm parent); also the same with com.graphene.fork: false.
- burst: 50 concurrent calls to the function at zero, until all completed.
"""
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

URL, TOKEN, PYTHON, HANDLER = sys.argv[1:5]
ROUNDS = 7


def post(path, body=b"x", auth=False):
    req = urllib.request.Request(URL + path, data=body, method="POST")
    if auth:
        req.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read()


def replicas(name):
    req = urllib.request.Request(URL + "/system/function/" + name)
    req.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(req, timeout=30) as r:
        d = json.load(r)
    return d["replicas"], d["availableReplicas"], len(d["graphene"].get("instances", []))


def to_zero(name):
    post("/system/scale-function/" + name, json.dumps({"replicas": 0}).encode(), auth=True)
    deadline = time.time() + 60
    while replicas(name) != (0, 0, 0):
        if time.time() > deadline:
            sys.exit(f"{name} did not reach zero")
        time.sleep(0.05)


def from_zero(name):
    to_zero(name)
    t = time.perf_counter()
    status, _ = post("/function/" + name)
    assert status == 200
    return time.perf_counter() - t


def scratch():
    code = (
        "import sys; sys.path[:0]=[sys.argv[1]]; import handler; print(handler.handle('x'))"
    )
    t = time.perf_counter()
    subprocess.run([PYTHON, "-c", code, HANDLER], check=True, capture_output=True)
    return time.perf_counter() - t


def burst(name, n=50):
    to_zero(name)
    errors = []

    def one():
        try:
            status, _ = post("/function/" + name)
            if status != 200:
                errors.append(status)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, errors


post("/function/model")  # both ready once before measuring
post("/function/model-nofork")
s = statistics.median(scratch() for _ in range(ROUNDS))
g = statistics.median(from_zero("model") for _ in range(ROUNDS))
n = statistics.median(from_zero("model-nofork") for _ in range(ROUNDS))
b, errors = burst("model")
ms = lambda x: f"{x * 1000:8.1f} ms"  # noqa: E731
print(f"median of {ROUNDS}; handler imports numpy and fits a 2000x64 least-squares model at import")
print(f"scratch: start python, import handler, answer  {ms(s)}")
print(f"graphene from zero, forked from warm parent   {ms(g)}")
print(f"graphene from zero, fork: false               {ms(n)}")
print(f"graphene from zero, burst of 50 concurrent     {ms(b)} for all ({len(errors)} errors)")
print(f"cold start: scratch / graphene = {s / g:.1f}x sooner (target >= 10x)")

"""Async throughput: N jobs through a trivial function, in one run.

Prints how fast jobs are accepted (202s per second, 8 client threads), how
fast they complete (callbacks per second from the first POST to the last
callback), and the same function called synchronously with the same
concurrency, for the ratio.
"""
import http.server
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

URL, TOKEN = sys.argv[1:3]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
THREADS = 8
done = set()
lock = threading.Lock()
finished = threading.Event()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            done.add(self.headers["x-call-id"])
            if len(done) >= N:
                finished.set()
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
callback = f"http://127.0.0.1:{server.server_address[1]}/done"


def post(path, headers):
    req = urllib.request.Request(URL + path, data=b"x", method="POST")
    req.add_header("Authorization", "Bearer " + TOKEN)
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        return r.status


def run(fn, n):
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(fn, range(n)))


start = time.time()
codes = run(lambda i: post("/async-function/jobecho", {"X-Callback-Url": callback}), N)
accepted = time.time() - start
assert all(c == 202 for c in codes), set(codes)
if not finished.wait(600):
    sys.exit(f"only {len(done)} of {N} callbacks arrived")
completed = time.time() - start

start = time.time()
codes = run(lambda i: post("/function/jobecho", {}), N)
sync = time.time() - start
assert all(c == 200 for c in codes), set(codes)

print(f"jobs: {N}, {THREADS} client threads, function concurrency 8 (1 replica, 2 workers)")
print(f"accepted (202, stored by the queue):   {N / accepted:8.0f} jobs/s")
print(f"completed (callback received):        {N / completed:8.0f} jobs/s")
print(f"synchronous calls, same function:     {N / sync:8.0f} calls/s")
print(f"async completion / sync throughput:   {sync / completed:8.2f}x")

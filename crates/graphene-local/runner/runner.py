"""graphene's Python runner: imports a function's handler once, then serves
calls from the replica host over a Unix socket.

Protocol (language-neutral; see crates/graphene-local/src/protocol.rs):
every message is a frame: two big-endian u32 (header length, body length),
a JSON header, then the body bytes. Each connection starts with a hello
frame from the runner ({"type": "parent"|"worker"|"import_error", "pid",
"token"}; workers also name their "replica"). On a worker connection the host
sends a request frame ({"method", "path", "query", "headers", "call_id"}) and
the worker answers with a response frame ({"status", "headers", "error"?}),
one call at a time.

GRAPHENE_MODE=fork (the default): this process is the function's warm
parent. It imports the handler once (the model loads once), then waits on its
control connection: {"type": "spawn", "replica", "workers"} forks that many
workers for a replica, {"type": "drain", "replica"} stops replacing them (they
exit when the host closes their connections), {"type": "retire", "replica"}
ends them, and {"type": "kill", "pid"} replaces one. Workers share the imported module
copy-on-write; a worker that dies is forked again while its replica lives,
and the parent reports {"type": "exit", "pid", "replica", "status",
"expected"}. It exits when the host closes the control connection.

GRAPHENE_MODE=direct: for handlers that are not safe to fork. This process
imports the handler and serves calls itself as the only worker of replica
GRAPHENE_REPLICA.
"""

import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

HEADER = struct.Struct(">II")
# Proves to the host that connections come from this runner; kept out of the
# handler's environment.
TOKEN = os.environ.pop("GRAPHENE_RUNNER_TOKEN", "")


def send_frame(sock, header, body=b""):
    head = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(HEADER.pack(len(head), len(body)) + head + body)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock):
    raw = recv_exact(sock, HEADER.size)
    if raw is None:
        return None, None
    hlen, blen = HEADER.unpack(raw)
    head = recv_exact(sock, hlen)
    body = recv_exact(sock, blen) if blen else b""
    if head is None or body is None:
        return None, None
    return json.loads(head), body


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def die_with_parent():
    """Ask the kernel to kill this process when its parent exits (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort off Linux
        pass


class Headers(dict):
    """Request headers, looked up without regard to case (as in Flask)."""

    def __init__(self, pairs):
        super().__init__((k.lower(), v) for k, v in pairs)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def __contains__(self, key):
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)


class Event:
    """The python3-http template's event."""

    def __init__(self, header, body):
        self.body = body
        self.headers = Headers(header.get("headers", []))
        self.method = header.get("method", "GET")
        self.query = _parse_query(header.get("query", ""))
        self.path = header.get("path", "/")


class Context:
    def __init__(self):
        self.hostname = os.environ.get("HOSTNAME", "localhost")


def _parse_query(q):
    from urllib.parse import parse_qs

    return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(q, keep_blank_values=True).items()}


def _as_bytes(value):
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def _with_json_type(value, headers):
    """Bodies that are neither text nor bytes are sent as JSON."""
    if value is not None and not isinstance(value, (str, bytes)):
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(["Content-Type", "application/json"])
    return headers


def call_python3(handle, header, body):
    out = handle(body.decode("utf-8", errors="replace"))
    return 200, _with_json_type(out, []), _as_bytes(out)


def call_python3_http(handle, header, body):
    out = handle(Event(header, body), Context())
    if not isinstance(out, dict):
        return 200, _with_json_type(out, []), _as_bytes(out)
    status = out.get("statusCode", 200)
    if isinstance(status, str) and status.strip().isdigit():
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"statusCode must be an HTTP status between 100 and 599, got {status!r}")
    raw_headers = out.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise ValueError(f"headers must be a dict, got {type(raw_headers).__name__}")
    headers = [[str(k), str(v)] for k, v in raw_headers.items()]
    payload = out.get("body", "")
    return status, _with_json_type(payload, headers), _as_bytes(payload)


def _handler_traceback(e):
    """The traceback from the handler's frames on (not the runner's)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def reinit_after_fork():
    """What a forked worker must not share with its parent or siblings."""
    import random

    random.seed()  # each worker gets its own random state
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        try:
            numpy.random.seed()  # numpy's global generator too
        except Exception:  # noqa: BLE001 - an odd numpy build: leave it
            pass


def serve(sock_path, replica, handle, call):
    die_with_parent()
    if replica:
        os.environ["HOSTNAME"] = replica
    sock = connect(sock_path)
    send_frame(sock, {"type": "worker", "pid": os.getpid(), "replica": replica, "token": TOKEN})
    while True:
        header, body = recv_frame(sock)
        if header is None:
            os._exit(0)
        try:
            status, headers, payload = call(handle, header, body)
            send_frame(sock, {"status": status, "headers": headers}, payload)
        except Exception as e:  # noqa: BLE001 - the handler's error goes back to the caller
            message = f"{type(e).__name__}: {e}"
            sys.stderr.write(f"call {header.get('call_id', '')} failed:\n{_handler_traceback(e)}")
            sys.stderr.flush()
            send_frame(sock, {"status": 500, "headers": [], "error": message}, message.encode())


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _describe(status):
    code = os.waitstatus_to_exitcode(status)
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def import_handler(sock_path):
    """Imports function/handler.py, or reports why not and exits with 3."""
    def fail(error):
        sock = connect(sock_path)
        send_frame(sock, {"type": "import_error", "pid": os.getpid(), "token": TOKEN, "error": error})
        os._exit(3)

    try:
        from function import handler
    except BaseException as e:  # noqa: BLE001 - reported to the host, then exit
        sys.stderr.write(_handler_traceback(e))
        sys.stderr.flush()
        fail(f"{type(e).__name__}: {e}")
    handle = getattr(handler, "handle", None)
    if not callable(handle):
        fail("function/handler.py defines no handle() function")
    return handle


def main():
    sock_path = os.environ["GRAPHENE_SOCKET"]
    lang = os.environ.get("GRAPHENE_LANG", "python3")
    mode = os.environ.get("GRAPHENE_MODE", "fork")
    root = os.environ.get("GRAPHENE_FUNCTION_ROOT", os.path.dirname(os.path.abspath(__file__)))
    # `from function import handler` as in OpenFaaS's templates; the folder
    # itself is on the path too, so the handler can import its own modules.
    sys.path[:0] = [root, os.path.join(root, "function")]
    sys.stdout = sys.stderr  # the handler's prints go to the function's logs
    die_with_parent()
    handle = import_handler(sock_path)
    call = call_python3_http if lang == "python3-http" else call_python3
    if mode == "direct":
        serve(sock_path, os.environ.get("GRAPHENE_REPLICA", ""), handle, call)
        return

    import gc

    gc.freeze()  # objects made at import stay shared with forked workers
    control = connect(sock_path)
    send_frame(control, {"type": "parent", "pid": os.getpid(), "token": TOKEN})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    replicas = {}  # replica -> workers it should have
    ended = set()  # replicas drained or retired: never spawned again
    children = {}  # pid -> (replica, fork time)
    killed = set()  # pids ended on the host's request
    owed = []  # (due time, replica): workers to fork again
    delay = 0.0  # grows while workers die right after starting
    warned = False

    def spawn(replica):
        nonlocal warned
        if not warned and threading.active_count() > 1:
            warned = True
            sys.stderr.write(
                "warning: the handler started threads at import; they do not exist in forked "
                "workers and locks they held may deadlock them (start threads lazily, or set "
                "com.graphene.fork: \"false\")\n")
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory: try again later
            sys.stderr.write(f"could not fork a worker for {replica}: {e}\n")
            owed.append((time.monotonic() + 1.0, replica))
            return
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            control.close()
            try:
                reinit_after_fork()
                serve(sock_path, replica, handle, call)
            finally:
                os._exit(1)
        children[pid] = (replica, time.monotonic())

    while True:
        wait = max(0.0, min(due for due, _ in owed) - time.monotonic()) if owed else None
        ready, _, _ = select.select([control, wake_r], [], [], wait)
        if wake_r in ready:
            os.read(wake_r, 512)
        # Only our workers: other children (started by the handler at import)
        # are left to whoever started them.
        for worker in list(children):
            try:
                pid, status = os.waitpid(worker, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker, 0
            if pid == 0:
                continue
            replica, born = children.pop(pid)
            expected = pid in killed or replica not in replicas
            killed.discard(pid)
            lived = time.monotonic() - born
            if not expected:
                delay = 0.0 if lived > 10 else min(max(delay * 2, 0.1), 5.0) if lived < 1 else delay
            how = _describe(status)
            try:
                send_frame(control, {"type": "exit", "pid": pid, "replica": replica,
                                     "status": how, "expected": expected})
            except OSError:  # the host is gone: so are we (read below)
                pass
            if replica in replicas:
                owed.append((time.monotonic() + (0.0 if expected else delay), replica))
                if not expected:
                    sys.stderr.write(f"worker {pid} of {replica} {how}; forking a new one\n")
                    sys.stderr.flush()
        now = time.monotonic()
        for entry in [e for e in owed if e[0] <= now]:
            owed.remove(entry)
            if entry[1] in replicas:
                spawn(entry[1])
        if control in ready:
            message, _ = recv_frame(control)
            if message is None:  # the host is gone or stops this function
                for pid in children:
                    _kill(pid)
                os._exit(0)
            kind = message.get("type")
            replica = message.get("replica")
            if kind == "spawn" and replica not in replicas and replica not in ended:
                replicas[replica] = int(message.get("workers", 1))
                for _ in range(replicas[replica]):
                    spawn(replica)
            elif kind in ("drain", "retire"):
                replicas.pop(replica, None)
                ended.add(replica)
                if kind == "retire":
                    for pid, (owner, _) in children.items():
                        if owner == replica:
                            killed.add(pid)
                            _kill(pid)
            elif kind == "kill" and message.get("pid") in children:
                killed.add(message["pid"])
                _kill(message["pid"])  # a call ran past its timeout; forked again above


if __name__ == "__main__":
    main()

"""Baseline worker processes (benchmarks.tf_baseline, benchmarks.jax_baseline): the protocol both speak and the
client the benchmark drives them with. One JSON request per line on stdin, one JSON reply per line on stdout,
everything else on stderr; a worker is its own process so that its framework's thread pools and GPU memory are
set up before the framework starts, and so that the onnxruntime process never imports TensorFlow or JAX."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.errors import BenchmarkError

ROOT = Path(__file__).resolve().parent.parent


def serve(make_baseline):
    """Answer requests from stdin until it closes with `make_baseline()`'s `info()` and `handle(request)`;
    replies go to the real stdout, everything else (a framework's prints too) to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    try:
        baseline = make_baseline()
        replies.write(json.dumps({"ok": True, "info": baseline.info()}) + "\n")
    except Exception as exc:
        replies.write(json.dumps({"ok": False, "error": "{}: {}".format(type(exc).__name__, exc)}) + "\n")
        replies.flush()
        return 1
    replies.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = {"ok": True, "result": baseline.handle(json.loads(line))}
        except Exception as exc:
            reply = {"ok": False, "error": "{}: {}".format(type(exc).__name__, exc)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


class RequestError(BenchmarkError):
    """One request failed in a worker that is still running."""


class Worker:
    """A running worker: `request(dict)` returns its result or raises RequestError; the worker's stderr goes to
    a file that is shown only if it fails to start or dies."""

    def __init__(self, module, args, env, what, how_to_skip):
        self.what, self.how_to_skip = what, how_to_skip
        env = dict(env, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self._log = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen([sys.executable, "-m", module] + list(args), cwd=str(ROOT), env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        reply = self._reply()
        if not reply.get("ok"):
            self._fail(": " + reply["error"])
        self.info = reply["info"]

    def _reply(self):
        line = self._proc.stdout.readline()
        if not line.strip():
            self._fail(" (its worker exited)")
        return json.loads(line)

    def _fail(self, why):
        self._log.seek(0)
        tail = self._log.read()[-3000:]
        self.close()
        raise BenchmarkError("The {} failed{}; {}.\n{}".format(self.what, why, self.how_to_skip, tail))

    def request(self, request):
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        reply = self._reply()
        if not reply.get("ok"):
            raise RequestError("{}: {}".format(self.what, reply["error"]))
        return reply["result"]

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if not self._log.closed:
            self._log.close()

"""A CUDA that runs on the CPU, for testing the CUDA code paths of export.runtime and the benchmark here:
onnxruntime 'has' the CUDA provider, its sessions are CPU sessions that report it, the device's OrtValues live on
the CPU, and page-locked host memory is malloc'd."""

import ctypes

import onnxruntime

from export import runtime

REAL_SESSION = onnxruntime.InferenceSession


class FakeCudaSession:
    """A CPU session that says it runs on CUDA; records the providers it was asked for and its IOBinding runs."""

    made = []

    def __init__(self, path, sess_options=None, providers=None):
        self._session = REAL_SESSION(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self.asked = providers
        self.bound_runs = []
        FakeCudaSession.made.append(self)

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run_with_iobinding(self, binding, run_options=None):
        self.bound_runs.append(binding)
        return self._session.run_with_iobinding(binding, run_options)

    def __getattr__(self, name):
        return getattr(self._session, name)


class LibcHost(runtime.PinnedHost):
    """PinnedHost over malloc/free: the same ownership logic, without a CUDA runtime."""

    def __init__(self):
        self._libc = ctypes.CDLL(None)
        self._libc.malloc.restype = ctypes.c_void_p
        self._libc.malloc.argtypes = [ctypes.c_size_t]
        self._libc.free.argtypes = [ctypes.c_void_p]
        self.live = set()

    def _alloc(self, nbytes):
        ptr = self._libc.malloc(nbytes)
        self.live.add(ptr)
        return ptr

    def _free(self, ptr):
        self.live.remove(ptr)
        self._libc.free(ptr)


def install(monkeypatch, host=None):
    """Fake CUDA for one test; `host` (a PinnedHost, or None for pageable memory) is what PinnedHost.load gives."""
    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider"] + [p for p in available if p != "CUDAExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeCudaSession)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda *a, **k: None, raising=False)
    monkeypatch.setitem(runtime.ORT_DEVICE, "cuda", "cpu")
    monkeypatch.setattr(runtime.PinnedHost, "load", classmethod(lambda cls: host))
    monkeypatch.setattr(runtime.PinnedHost, "load_error", "no CUDA runtime library (test)", raising=False)
    FakeCudaSession.made = []
    return FakeCudaSession

"""The benchmarks' errors: each message says what went wrong and what to do, in one line where it can."""


class BenchmarkError(Exception):
    """The benchmark cannot run as asked; the message says why and what to do."""


class ModelNotFoundError(BenchmarkError):
    """No exported model where the command line points."""


class DeviceUnavailableError(BenchmarkError):
    """The asked-for device (the CUDA provider) is not available or not active."""

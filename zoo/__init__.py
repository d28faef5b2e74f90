"""aezoo: a Keras 3 model zoo of autoencoders.

    >>> import zoo
    >>> zoo.list_models()
    >>> model = zoo.build("dae", noise="masking", noise_level=0.3)
"""

from zoo import models as _models  # noqa: F401  (registers every family)
from zoo.registry import build, describe_models, get_class, list_models

__all__ = ["build", "describe_models", "get_class", "list_models"]
__version__ = "0.1.0"

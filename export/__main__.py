"""`python -m export RUN_DIR`: export a run to SavedModel and ONNX with a parity check (see export.exporter)."""

import sys

from export.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())

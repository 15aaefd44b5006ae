"""TensorFlow's process options: set before TensorFlow is first imported, by anyone.

Kept apart from `lstm.py` so that callers can set the options without importing TensorFlow.
"""

from __future__ import annotations

import os


def configure_tensorflow() -> None:
    """Set TensorFlow's process options; they only count before TensorFlow is first imported.

    oneDNN's fused CPU kernels reorder floating-point sums between runs, which would break
    "a restarted run ends with the same weights", and announce themselves on stderr.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

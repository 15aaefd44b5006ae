"""The pure core imports neither Kafka nor TensorFlow: every module of `daemon/core/`."""

import pkgutil
import subprocess
import sys

import daemon.core


def test_every_core_module_imports_without_kafka_or_tensorflow():
    modules = [f"daemon.core.{m.name}" for m in pkgutil.iter_modules(daemon.core.__path__)]
    assert len(modules) >= 5
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "heavy = ('kafka', 'tensorflow', 'keras')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

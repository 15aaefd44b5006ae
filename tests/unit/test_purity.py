"""The pure core imports neither Kafka nor TensorFlow."""

import subprocess
import sys


def test_core_modules_import_without_kafka_or_tensorflow():
    code = (
        "import sys\n"
        "import daemon.events, daemon.slots, daemon.batcher, daemon.scaling, daemon.engine\n"
        "heavy = ('kafka', 'tensorflow', 'keras')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

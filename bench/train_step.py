"""Train-step throughput: lstmd's compiled step vs the seed-style eager loop and train_on_batch.

Run: .venv/bin/python bench/train_step.py [--seconds 0.5] [--rounds 5] [--sizes 32x16,256x32]

Compares, per size (B x T, F=8, units=64, one target) and in the same process:

* lstmd      `daemon.model.lstm.StatefulLSTM.train_step` (one traced tf.function, explicit states,
             unrolled time loop), called with numpy arrays exactly as the learner calls it;
* eager      the seed-style loop: a Keras 3 `LSTM(stateful=True)` model built with
             `keras.Input(batch_shape=...)`, `tf.GradientTape`, `model(x)` per batch and
             `optimizer.apply_gradients`, no tf.function;
* tob_jit    `model.train_on_batch` on an equivalent stateful model compiled with
             `jit_compile=True` (XLA);
* tob        the same without XLA (for reference);
* lstmd_xla  lstmd's own step traced with `jit_compile=True` (a lever, monkeypatched here).

It also measures a float32 matmul ceiling (tf.matmul 512^2 and 1024^2 inside a tf.function)
and lstmd's achieved GFLOP/s (forward = 2*B*T*4*units*(F+units) + head, backward = 2 x forward).

Every variant runs in its own subprocess because TensorFlow's thread pools can only be set
before it runs an op: `default` (TF picks) and `1thread` (intra-op = inter-op = 1), then a second
lstmd-only pass of each, alternating, so the thread comparison is not decided by one noisy
window. Methods are interleaved over `--rounds` rounds and the best round counts (the machine is
shared and noisy); method ratios are between figures of the same subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
F, UNITS, N_TARGETS = 8, 64, 1


def flops_per_step(b: int, t: int) -> float:
    forward = 2 * b * t * 4 * UNITS * (F + UNITS) + 2 * b * t * UNITS * N_TARGETS
    return 3.0 * forward  # forward + backward (≈ 2 x forward)


def xla_model(cls, settings):
    """Build StatefulLSTM with its steps traced under jit_compile=True (monkeypatch, bench only)."""
    import tensorflow as tf

    import daemon.model.lstm as dm

    original = dm.tf.function

    def with_jit(*args, **kwargs):
        kwargs["jit_compile"] = True
        return original(*args, **kwargs)

    dm.tf.function = with_jit
    try:
        return cls(settings)
    finally:
        dm.tf.function = original
        assert tf.function is original


def measure_size(b: int, t: int, full: bool, seconds: float, rounds: int, rng) -> dict:
    """Steps/s of each method at one size, interleaved over `rounds`, best round each."""
    import keras
    import numpy as np
    import tensorflow as tf

    from daemon.model.lstm import StatefulLSTM
    from daemon.settings import ModelSettings

    x = rng.normal(size=(b, t, F)).astype(np.float32)
    y = rng.normal(size=(b, t, N_TARGETS)).astype(np.float32)
    mask = np.ones((b, t), bool)

    # lstmd
    started = time.perf_counter()
    lstmd = StatefulLSTM(
        ModelSettings(n_features=F, n_targets=N_TARGETS, units=UNITS, batch_size=b, window=t)
    )
    lstmd_build = time.perf_counter() - started
    states = lstmd.zero_states()

    def run_lstmd(states=states, lstmd=lstmd):
        _, _, new = lstmd.train_step(x, y, mask, states)
        states[...] = new

    # seed-style eager loop
    def stateful_model():
        inp = keras.Input(batch_shape=(b, t, F))
        seq = keras.layers.LSTM(UNITS, stateful=True, return_sequences=True)(inp)
        return keras.Model(inp, keras.layers.Dense(N_TARGETS)(seq))

    eager_model = stateful_model() if full else None
    eager_opt = keras.optimizers.Adam(learning_rate=0.003, clipnorm=1.0)
    xt, yt = tf.constant(x), tf.constant(y)

    def run_eager():
        with tf.GradientTape() as tape:
            preds = eager_model(xt, training=True)
            loss = tf.reduce_mean(tf.square(preds - yt))
        grads = tape.gradient(loss, eager_model.trainable_variables)
        eager_opt.apply_gradients(zip(grads, eager_model.trainable_variables, strict=True))
        float(loss)

    methods = {"lstmd": run_lstmd}
    compile_s = {"lstmd": lstmd_build}
    if full:
        methods["eager"] = run_eager
        xla = xla_model(
            StatefulLSTM,
            ModelSettings(n_features=F, n_targets=N_TARGETS, units=UNITS, batch_size=b, window=t),
        )
        xla_states = xla.zero_states()

        def run_xla(states=xla_states, model=xla):
            _, _, new = model.train_step(x, y, mask, states)
            states[...] = new

        methods["lstmd_xla"] = run_xla
    for name, jit in (("tob_jit", True), ("tob", False)) if full else ():
        model = stateful_model()
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=0.003, clipnorm=1.0),
            loss="mse",
            jit_compile=jit,
        )
        started = time.perf_counter()
        model.train_on_batch(x, y)
        compile_s[name] = time.perf_counter() - started
        methods[name] = lambda model=model: model.train_on_batch(x, y)

    for fn in methods.values():  # warm-up
        for _ in range(3):
            fn()
    best: dict[str, float] = {name: 0.0 for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            budget = seconds if name != "eager" else seconds / 2
            n = 0
            started = time.perf_counter()
            while True:
                fn()
                n += 1
                elapsed = time.perf_counter() - started
                if elapsed >= budget and n >= 3:
                    break
            best[name] = max(best[name], n / elapsed)
    return {
        "steps_per_s": best,
        "first_call_s": compile_s,
        "lstmd_gflops": best["lstmd"] * flops_per_step(b, t) / 1e9,
        "events_per_s": best["lstmd"] * b * t,
    }


# ---------------------------------------------------------------------------------------------
# Worker: runs inside a subprocess with the thread settings of one variant.
# ---------------------------------------------------------------------------------------------


def worker(
    threads: int, sizes: list[tuple[int, int]], seconds: float, rounds: int, full: bool
) -> dict:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as the daemon runs it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    sys.path.insert(0, str(ROOT))

    out: dict = {"threads": threads, "sizes": {}}

    # matmul ceiling
    ceiling = {}
    for n in (512, 1024):
        a = tf.random.normal((n, n))
        bm = tf.random.normal((n, n))
        mm = tf.function(lambda x, y: tf.matmul(x, y))
        mm(a, bm).numpy()
        reps = 0
        best = 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            reps = 0
            while time.perf_counter() - started < seconds / 2:
                mm(a, bm).numpy()
                reps += 1
            best = max(best, reps * 2 * n**3 / (time.perf_counter() - started) / 1e9)
        ceiling[n] = best
    out["matmul_gflops"] = ceiling

    rng = np.random.default_rng(0)
    for b, t in sizes:
        out["sizes"][f"{b}x{t}"] = measure_size(b, t, full, seconds, rounds, rng)
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="32x16,256x32", help="BxT,BxT,...")
    parser.add_argument("--variants", default="default,1thread")
    parser.add_argument("--no-repeat", action="store_true", help="skip the lstmd-only 2nd pass")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lstmd-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.worker is not None:
        result = worker(args.worker, sizes, args.seconds, args.rounds, not args.lstmd_only)
        print("RESULT " + json.dumps(result))
        return 0

    variants = args.variants.split(",")
    passes = [(v, True) for v in variants]
    if not args.no_repeat:
        passes += [(v, False) for v in variants]
    results: dict[str, dict] = {}
    for variant, full in passes:
        threads = 1 if variant == "1thread" else 0
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            str(threads),
            "--sizes",
            args.sizes,
            "--seconds",
            str(args.seconds),
            "--rounds",
            str(args.rounds),
        ]
        if not full:
            cmd.append("--lstmd-only")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
            return 1
        res = json.loads(line[len("RESULT ") :])
        if full:
            results[variant] = res
            for r in res["sizes"].values():
                r["lstmd_passes"] = [r["steps_per_s"]["lstmd"]]
        else:  # second pass: only lstmd's best over both passes changes the thread comparison
            for size, r in res["sizes"].items():
                results[variant]["sizes"][size]["lstmd_passes"].append(r["steps_per_s"]["lstmd"])

    print(
        f"nproc {os.cpu_count()}; F={F}, units={UNITS}; best of {args.rounds} rounds; "
        "ratios within one subprocess"
    )
    for variant, res in results.items():
        ceil = res["matmul_gflops"]
        print(
            f"\n== variant {variant} (intra/inter-op threads: {res['threads'] or 'TF default'}) =="
        )
        print(f"matmul ceiling: 512^2 {ceil['512']:.1f} GFLOP/s, 1024^2 {ceil['1024']:.1f} GFLOP/s")
        for size, r in res["sizes"].items():
            s = r["steps_per_s"]
            print(f"-- B x T = {size} --")
            for name in ("lstmd", "eager", "tob_jit", "tob", "lstmd_xla"):
                first = r["first_call_s"].get(name)
                note = f"  (build+first call {first:.2f} s)" if first is not None else ""
                print(f"  {name:9s} {s[name]:8.1f} steps/s{note}")
            print(f"  lstmd / eager     = {s['lstmd'] / s['eager']:.1f}x")
            print(f"  lstmd / lstmd_xla = {s['lstmd'] / s['lstmd_xla']:.2f}x")
            print(f"  lstmd / tob_jit = {s['lstmd'] / s['tob_jit']:.2f}x")
            print(f"  lstmd / tob     = {s['lstmd'] / s['tob']:.2f}x")
            print(
                f"  lstmd {r['lstmd_gflops']:.2f} GFLOP/s = "
                f"{100 * r['lstmd_gflops'] / max(ceil['512'], ceil['1024']):.1f}% of the matmul "
                f"ceiling; {r['events_per_s']:,.0f} timesteps/s"
            )
    if "default" in results and "1thread" in results:
        print("\n== threads: 1thread / default (lstmd steps/s; >1 means one thread is faster) ==")
        for size in results["default"]["sizes"]:
            d = results["default"]["sizes"][size]["lstmd_passes"]
            o = results["1thread"]["sizes"][size]["lstmd_passes"]
            print(
                f"  {size}: {max(o) / max(d):.2f}x  (best of passes: {max(o):.1f} vs "
                f"{max(d):.1f} steps/s; passes 1thread {[round(v) for v in o]}, "
                f"default {[round(v) for v in d]}; cross-process, noisy)"
            )
    small = results.get("default", next(iter(results.values())))["sizes"].get("32x16")
    if small:
        s = small["steps_per_s"]
        print("\ntargets at 32x16 (default threads):")
        print(
            f"  >= 25x eager     : {s['lstmd'] / s['eager']:.1f}x "
            f"{'met' if s['lstmd'] / s['eager'] >= 25 else 'MISSED'}"
        )
        print(
            f"  >= 1.1x tob_jit  : {s['lstmd'] / s['tob_jit']:.2f}x "
            f"{'met' if s['lstmd'] / s['tob_jit'] >= 1.1 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Port a briefly trained Keras CNN to PyTorch and Flax with xbn, and prove it.

    python examples/port_cnn/run.py [--out DIR]

1. build (Conv-BN-ReLU) x3 + global pooling + Dense in Keras, train a few steps on random data
   (fixed seeds), save ``model.keras``;
2. ``xbn audit model.keras --target torch``: the BN pitfalls for this port;
3. ``xbn convert``: BN state into the torch model's state_dict and the Flax model's
   variables (templates: the freshly initialised models), conv/dense copied by hand;
4. ``assert_bn_equivalent`` in inference mode (and, for torch, in training mode, where the
   unbiased running variance shows up as an *expected* difference);
5. round trip Keras -> torch -> Keras: identical arrays.

Prints the max abs differences. Files go to ``--out`` (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # this checkout's xbn, and models.py

import numpy as np  # noqa: E402

SEED = 0


def train_keras(out: Path, rng: np.random.Generator):
    import keras
    from models import keras_cnn

    keras.utils.set_random_seed(SEED)
    model = keras_cnn()
    x = rng.normal(1.0, 2.0, size=(64, 16, 16, 3)).astype("float32")
    y = rng.normal(size=(64, 5)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)  # 12 steps
    model.save(out / "model.keras")
    return model


def port_torch(model, out: Path):
    import torch
    from models import copy_conv_dense_to_torch, keras_conv_dense, torch_cnn

    from xbn.port import convert_file

    torch.manual_seed(SEED)
    net = torch_cnn()
    torch.save(net.state_dict(), out / "torch_init.pt")
    report = convert_file(out / "model.keras", out / "cnn.pt", template=out / "torch_init.pt")
    state = torch.load(out / "cnn.pt", weights_only=True)
    net.load_state_dict(copy_conv_dense_to_torch(state, keras_conv_dense(model)))
    net.eval()
    torch.jit.script(net).save(str(out / "cnn_ts.pt"))  # for `xbn verify` on files
    return net, report


def port_flax(model, out: Path):
    import jax
    from flax import serialization
    from models import copy_conv_dense_to_flax, flax_cnn, keras_conv_dense

    from xbn.port import convert_file

    net = flax_cnn()
    init = jax.jit(lambda key, x: net.init(key, x, train=False))(  # one compilation
        jax.random.key(SEED), np.zeros((1, 16, 16, 3), np.float32))
    (out / "flax_init.msgpack").write_bytes(
        serialization.msgpack_serialize(serialization.to_state_dict(init)))
    report = convert_file(out / "model.keras", out / "cnn.msgpack",
                          template=out / "flax_init.msgpack")
    variables = serialization.msgpack_restore((out / "cnn.msgpack").read_bytes())
    return (net, copy_conv_dense_to_flax(variables, keras_conv_dense(model))), report


def round_trip(out: Path) -> bool:
    from xbn.port import convert_file
    from xbn.port.formats import read

    convert_file(out / "cnn.pt", out / "back.keras", template=out / "model.keras")
    a, b = read(out / "model.keras"), read(out / "back.keras")
    return all(np.array_equal(x.values[r], y.values[r]) and x.values[r].dtype == y.values[r].dtype
               for x, y in zip(a.layers, b.layers, strict=True) for r in x.values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="xbn-port-cnn-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(SEED)

    from xbn.port import audit_file
    from xbn.testing import assert_bn_equivalent

    model = train_keras(out, rng)
    audit = audit_file(out / "model.keras", target="torch")
    counts = audit.counts()
    print(f"audit model.keras --target torch: {len(audit.layers)} BN layers, "
          f"{counts['warn']} warnings (epsilon, momentum direction), {counts['error']} errors")

    torch_net, t_report = port_torch(model, out)
    flax_net, f_report = port_flax(model, out)
    print(f"convert -> torch: {t_report.pairs}")
    print(f"convert -> flax:  {f_report.pairs}")

    x = rng.normal(1.0, 2.0, size=(32, 16, 16, 3)).astype("float32")
    np.save(out / "x.npy", x)
    eval_t = assert_bn_equivalent(model, torch_net, x, modes=("eval",),
                                  layout_a="NHWC", layout_b="NCHW")
    eval_f = assert_bn_equivalent(model, flax_net, x, modes=("eval",))
    # training mode on small batches (n = 2*16*16 = 512 values per channel), where torch's
    # unbiased running variance is larger than float32 noise: labelled "expected"
    train_t = assert_bn_equivalent(model, torch_net, [x[:2], x[2:4], x[4:6]], modes=("train",),
                                   steps=3, layout_a="NHWC", layout_b="NCHW")
    print(f"inference  keras vs torch: max abs diff {eval_t.max_abs('eval'):.3g} "
          f"(tolerance {eval_t.rows[0]['tolerance']:.3g})")
    print(f"inference  keras vs flax:  max abs diff {eval_f.max_abs('eval'):.3g} "
          f"(tolerance {eval_f.rows[0]['tolerance']:.3g})")
    var_rows = [r for r in train_t.rows if r["quantity"] == "running_var"]
    print(f"training   keras vs torch: outputs max abs diff "
          f"{train_t.max_abs('train', 'output'):.3g}; running_var max abs diff "
          f"{max(r['max_abs'] for r in var_rows):.3g}, labelled "
          f"{sorted({r['verdict'] for r in var_rows})} (torch's n/(n-1) update, n=512)")
    print(f"round trip keras -> torch -> keras identical: {round_trip(out)}")
    print(f"files in {out}; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

"""Why xbn does not jit the JAX adapters' calls (issue 16 asked to try it): a whole step
jitted is not the program an eager call runs, so its float32 results are not the same bits.

flax.linen.BatchNorm over seven layouts (rank 2 to 5, channels first and last): three calls
(training, inference, training) and the input gradient, once eager (each primitive compiled
on its own, as the adapters run them) and once under ``jax.jit`` (XLA fuses the step), each
in a fresh process. Prints the CPU seconds of each and how many of the 28 arrays differ in
some bit. Usage: ``python benchmarks/jax_jit_vs_eager.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
import jax, jax.numpy as jnp, flax.linen as nn
mode, out = sys.argv[1], sys.argv[2]
start = time.process_time()
arrays = []
for shape in [(4, 3), (2, 3, 5), (2, 5, 3), (2, 3, 4, 4), (2, 4, 4, 3), (2, 3, 2, 2, 2), (2, 2, 2, 2, 3)]:
    module = nn.BatchNorm(axis=1 if shape[1] == 3 else -1, momentum=0.9, epsilon=1e-5)
    x = jnp.asarray(np.random.RandomState(0).randn(*shape).astype(np.float32))
    variables = module.init(jax.random.key(0), x, use_running_average=True)

    def forward(v, x, train):
        return module.apply(v, x, use_running_average=not train, mutable=["batch_stats"])

    step = jax.jit(forward, static_argnums=2) if mode == "jit" else forward
    for train in (True, False, True):
        y, mutated = step(variables, x, train)
        variables = {"params": variables["params"], **mutated}
        arrays.append(np.asarray(y))

    def objective(x, params):
        y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            use_running_average=False, mutable=["batch_stats"])
        return jnp.sum(y * y)

    grad = jax.grad(objective, argnums=(0, 1))
    grad = jax.jit(grad) if mode == "jit" else grad
    arrays.append(np.asarray(grad(x, variables["params"])[0]))
np.savez(out, *arrays)
print(json.dumps({"cpu": time.process_time() - start}))
"""


def main() -> int:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    with tempfile.TemporaryDirectory() as tmp:
        cpu, files = {}, {}
        for mode in ("eager", "jit"):
            files[mode] = Path(tmp) / f"{mode}.npz"
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(files[mode])],
                                 check=True, capture_output=True, text=True, env=env).stdout
            cpu[mode] = json.loads(out.splitlines()[-1])["cpu"]
        import numpy as np

        eager, jitted = np.load(files["eager"]), np.load(files["jit"])
        differ = [k for k in eager.files if not np.array_equal(eager[k], jitted[k])]
    print(f"eager {cpu['eager']:.2f} CPU-s, jit {cpu['jit']:.2f} CPU-s "
          f"(both with the import of JAX and flax)")
    print(f"{len(differ)} of {len(eager.files)} arrays differ in some bit between eager and jit")
    return 0


if __name__ == "__main__":
    sys.exit(main())

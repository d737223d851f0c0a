"""The MLX family: ``adapter.py`` (``mlx.nn.BatchNorm`` on MLX's CPU device), and
``state_io.py`` (``Module.save_weights`` files, ``.safetensors``/``.npz``).

Family folders import no framework here: mlx is imported by the modules that use it.
"""

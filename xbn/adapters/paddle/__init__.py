"""The PaddlePaddle family: ``adapter.py`` (``paddle.nn.BatchNorm1D/2D/3D`` in dygraph), and
``state_io.py`` (``paddle.save`` state_dict files, ``.pdparams``).

Family folders import no framework here: paddle is imported by the modules that use it.
"""

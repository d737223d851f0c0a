"""Plumbing shared by the export paths (``torch+onnx``, ``keras+onnx``, ``*+openvino``): an
exported graph checked, its BatchNormalization attributes read, and run in ONNX Runtime's CPU
provider or on OpenVINO's CPU plugin (``runtime``). Imports no framework at import time.
"""

"""The Keras family: ``adapter_keras3.py`` (Keras 3 on TensorFlow, JAX or torch),
``adapter_tf_keras.py`` (legacy Keras 2), ``state_io.py`` (.weights.h5, .keras, legacy .h5),
``live.py`` (live Keras 3 and tf-keras models for ``xbn audit``/``verify``).

Family folders import no framework here: keras is imported by the modules that use it.
"""

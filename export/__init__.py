"""From a trained run to deployable artifacts (SavedModel, ONNX, release bundles) and a TF-free runtime.

Deliberately empty: `export.runtime` must import without TensorFlow, so nothing heavy is imported here.
"""

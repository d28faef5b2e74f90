"""Measurements that produce the committed results: onnxruntime throughput (CPU and CUDA) against TensorFlow.

Kept import-light on purpose: the GPU benchmark runs in a process with numpy, onnx and onnxruntime only.
"""

"""lru-deploy: ship Linear Recurrent Unit models to NVIDIA GPUs (ONNX export, TensorRT engines, Polygraphy parity)."""
__version__ = "0.1.0"

"""lru-deploy: ship Linear Recurrent Unit models to NVIDIA GPUs (ONNX export, TensorRT engines, Polygraphy parity)."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """`lru_deploy.export_module`, imported on first use (it pulls in torch's ONNX exporter)."""
    if name == "export_module":
        from .export.module import export_module
        return export_module
    raise AttributeError(f"module 'lru_deploy' has no attribute {name!r}")

"""onnxruntime evaluation of the shipped artifact: metrics, gates, report."""

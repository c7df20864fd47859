"""Class-unlearning export pipeline: NHLE fine-tuning, CWM, ONNX export, ORT-verified release."""

__version__ = "0.5.1"

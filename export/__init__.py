"""torch -> ONNX: export, structural checks, provenance stamping."""

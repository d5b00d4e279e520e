"""The export stage: source model, ONNX graph, FP16/INT8 variants, the parity gate, the bundle writer."""

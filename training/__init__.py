"""BridgeNet offline training, evaluation and ONNX export (PyTorch)."""

"""BridgeNet inspection service: FastAPI + ONNX Runtime, no torch."""

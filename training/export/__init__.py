"""Export of a trained run to an ONNX model folder (`exporter`), reduced precisions (`precision`) and the
ONNX clean-up (`onnx_scrub`)."""

"""`lamini export`: ONNX export, int8 quantization and a parity report for every student."""

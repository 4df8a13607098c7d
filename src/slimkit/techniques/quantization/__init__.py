"""Quantization: integer arithmetic (qscheme), calibration observers, sub-byte packing.

The methods (PTQ, QAT) and their recipe steps build on these; see docs/ARCHITECTURE.md.
"""

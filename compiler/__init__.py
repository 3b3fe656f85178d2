"""wafer: a hardware-software co-design compiler for wafer-scale AI chips."""

__version__ = "0.1.0"

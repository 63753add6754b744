"""optimum-awp: activation-aware weight pruning and INT4 quantization for Hugging Face transformers."""

__version__ = "0.1.0"

"""optimum-awp: activation-aware weight pruning and INT4 quantization for Hugging Face transformers.

Importing this package registers quant_method "awp" with transformers (idempotent), so
``from_pretrained(..., quantization_config=AWPConfig(...))`` and reloading a saved checkpoint work.
"""

from . import data, evaluate
from .compress import CompressionReport, compress
from .config import AWPConfig
from .hub import model_card, push_to_hub, save_pretrained
from .nn.linear import AWPLinear
from .quantizer import AWPQuantizer, register

__version__ = "0.1.0"

register()

__all__ = [
    "AWPConfig",
    "AWPLinear",
    "AWPQuantizer",
    "CompressionReport",
    "compress",
    "data",
    "evaluate",
    "model_card",
    "push_to_hub",
    "register",
    "save_pretrained",
]

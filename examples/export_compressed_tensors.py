"""Export an INT4 (or 2:4 + INT4) checkpoint to compressed-tensors' W4A16 pack-quantized layout.

    python examples/export_compressed_tensors.py COMPRESSED_DIR OUT_DIR

The export loads in plain transformers with the compressed-tensors package (and in vLLM), without
optimum-awp. 2:4 weights are written as INT4 codes with exact zeros (same outputs, dense speed).
"""

import subprocess
import sys

from optimum_awp.export import export_compressed_tensors

folder, out_dir = sys.argv[1], sys.argv[2]
export_compressed_tensors(folder, out_dir)

# Load it in a fresh interpreter that never imports optimum_awp.
check = (
    "import sys; from transformers import AutoModelForCausalLM; "
    f"m = AutoModelForCausalLM.from_pretrained({out_dir!r}); "
    "assert 'optimum_awp' not in sys.modules; print(m.config.quantization_config.quant_method)"
)
subprocess.run([sys.executable, "-c", check], check=True)

"""Compress a model while loading it: calibrate, prune 2:4 and quantize to INT4, then save.

    python examples/quantize_on_load.py [OUT_DIR] [METHOD]

Uses the embedded Gemma-3-270M (dequantized GGUF) and the offline Wikipedia (gensim sample) text.
A small calibration set (32 x 512 tokens) and 20 AWP iterations keep this short; METHOD=wanda takes
about a minute on a laptop CPU, AWP (the default) longer: raise nsamples, seqlen and max_iterations
for quality.
"""

import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

import optimum_awp
from optimum_awp.data import embedded_model

out_dir = sys.argv[1] if len(sys.argv) > 1 else "gemma-3-270m-awp-2of4-int4"
method = sys.argv[2] if len(sys.argv) > 2 else "awp"
path = embedded_model()  # a plain transformers checkpoint folder
tokenizer = AutoTokenizer.from_pretrained(path)

options = {"max_iterations": 20} if method == "awp" else {}  # each method takes its own options only
config = optimum_awp.AWPConfig(
    method=method, sparsity="2:4", bits=4, group_size=128,
    dataset="wikipedia-gensim", tokenizer=tokenizer, nsamples=32, seqlen=512, **options,
)
model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config)  # dense weights in, then compressed

print(model.config.quantization_config.compressed_modules)  # {module name: "2:4+int4", ...}
optimum_awp.save_pretrained(model, out_dir, tokenizer=tokenizer, calibration="Wikipedia (gensim sample)")
print(f"saved to {out_dir}; reload with AutoModelForCausalLM.from_pretrained({out_dir!r}) (optimum-awp installed)")

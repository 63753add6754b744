"""Generate text with a compressed checkpoint through transformers' pipeline.

    python examples/pipeline.py COMPRESSED_DIR_OR_HUB_ID ["prompt"]

The checkpoint is rebuilt from its packed tensors (nothing is recompressed). `import optimum_awp` is what
lets transformers read quant_method "awp": transformers has no plugin discovery for quantizers.
"""

import sys

from transformers import pipeline

import optimum_awp  # noqa: F401  (registers quant_method "awp")

model = sys.argv[1]
prompt = sys.argv[2] if len(sys.argv) > 2 else "The history of the city begins"
generate = pipeline("text-generation", model=model)
print(generate(prompt, max_new_tokens=40, do_sample=False)[0]["generated_text"])

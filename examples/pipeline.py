"""Generate text with a compressed checkpoint through transformers' pipeline.

    python examples/pipeline.py COMPRESSED_DIR_OR_HUB_ID ["prompt"]

The checkpoint is rebuilt from its packed tensors (nothing is recompressed). No `import optimum_awp` is
needed: installed, optimum-awp registers quant_method "awp" with transformers at start (docs/usage.md).
"""

import sys

from transformers import pipeline

model = sys.argv[1]
prompt = sys.argv[2] if len(sys.argv) > 2 else "The history of the city begins"
generate = pipeline("text-generation", model=model)
print(generate(prompt, max_new_tokens=40, do_sample=False)[0]["generated_text"])

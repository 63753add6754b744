"""Share a compressed checkpoint on the Hugging Face Hub with a model card.

    HF_TOKEN=hf_... python examples/push_to_hub.py COMPRESSED_DIR ORG/NAME

optimum_awp.push_to_hub creates the repo if needed and uploads the packed safetensors, config.json (with
quantization_config), the tokenizer and a README.md model card (method, settings, sizes, how to load) in
one commit. `model.push_to_hub(...)` works too, without the card.
"""

import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

import optimum_awp

folder, repo_id = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
commit = optimum_awp.push_to_hub(model, repo_id, tokenizer=tokenizer)
print(f"uploaded to {commit.commit_url}")

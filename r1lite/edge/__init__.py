"""The edge: opening a --model (a checkpoint or a GGUF), its chat format, export to Hugging Face and
GGUF, and the terminal chat."""

"""The base model: where it comes from (`sources`), how it becomes a Hugging Face folder
(`convert`), and the tokenizer facts later stages rely on (`tokenizer`)."""

"""`legalbuild export`: the merged model as a Hugging Face folder with a model card (hf.py,
card.py), a GGUF file (gguf.py, cached by gguf_entry.py) and an Ollama Modelfile (ollama.py)."""

from legalbuild.export.hf import MANIFEST_NAME, export_artifact

__all__ = ["MANIFEST_NAME", "export_artifact"]

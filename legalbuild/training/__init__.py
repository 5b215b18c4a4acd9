"""The train stage's logic (legalbuild/stages/train.py holds only its key and `run`):

- data.py: rows, token lengths, sample prompts; model.py: precision, base loading, LoRA, frozen check;
- worker.py: what one training process runs (TRL SFTTrainer), in the builder or as a launched rank;
- distributed.py: `[train.distributed]` resolved (world size, key part, strategy arguments, host
  checks; light, read by `plan`); launch.py: torchrun/accelerate as a process group;
- callbacks.py, monitoring.py, tracking.py, checkpoints.py, adapter.py: monitoring and outputs.

Only callbacks.py imports transformers at its top (it subclasses TrainerCallback and is imported
at training time); every other module keeps heavy imports inside functions.
"""

"""The train stage's logic (legalbuild/stages/train.py holds only its key and `run`):

- data.py: rows, token lengths, sample prompts; model.py: precision, base loading, LoRA, frozen check;
- job.py: one run in plain terms (TrainJob: recipe, folders, log; a launched rank reads it back);
- worker.py: what one training process runs, step by step (setup, tokenizer, model, fit, outputs),
  in the builder or as a launched rank; fit.py: TRL's SFTTrainer, its config and the stage's
  callbacks; outputs.py: the adapter and its reports, written by rank 0;
- distributed.py: `[train.distributed]` resolved (world size, key part, strategy arguments, host
  checks; light, read by `plan`); launch.py: torchrun/accelerate as a process group;
- callbacks.py, monitoring.py, tracking.py, checkpoints.py, adapter.py: monitoring and outputs.

Only callbacks.py imports transformers at its top (it subclasses TrainerCallback and is imported
at training time); every other module keeps heavy imports inside functions.
"""

"""Trainer callbacks of the train stage: progress bar, qualitative samples, overfitting watch,
LoRA weight histograms for W&B."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from legalbuild.answer_format import parse_audit
from legalbuild.prompting import chat_messages
from legalbuild.training.monitoring import FORMAT_RATE_KEY, detect_overfitting

logger = logging.getLogger("legalbuild.train")


class ProgressCallback(TrainerCallback):
    """A rich progress bar (steps, loss, tokens/s, ETA) in place of the Trainer's tqdm, and one log
    line per logging step. Measures training throughput over optimizer steps only, so evaluations
    and sample generation do not dilute tokens/s."""

    def __init__(self, log: Callable[[str], None], console: Console | None = None):
        self.log = log
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.train_seconds = 0.0
        self.train_tokens = 0
        self._step_started = 0.0
        self._tokens_at_step_start = 0

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss="-", speed="-"
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()
        self._tokens_at_step_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self.train_seconds += time.perf_counter() - self._step_started
        self.train_tokens += state.num_input_tokens_seen - self._tokens_at_step_start
        if self.progress is not None:
            self.progress.update(
                self.task, completed=state.global_step, speed=f"{self.tokens_per_second:,.0f}"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs and self.progress is not None:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
        if "loss" in logs:
            self.log(
                f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"lr {logs.get('learning_rate', 0):.2e}  {self.tokens_per_second:,.0f} tok/s"
            )
        elif "eval_loss" in logs:
            self.log(f"step {state.global_step}  validation loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class OverfitMonitor(TrainerCallback):
    """Warns (printed, logged, recorded) when validation loss rises `patience` evaluations in a row
    while the training loss falls. Reads the log history, so a resumed run keeps its memory."""

    def __init__(self, patience: int, log: Callable[[str], None]):
        self.patience = patience
        self.log = log
        self.events: list[dict[str, Any]] = []

    def on_evaluate(self, args, state, control, **kwargs):
        event = detect_overfitting(state.log_history, self.patience)
        if event is None or any(e["step"] == event["step"] for e in self.events):
            return
        self.events.append(event)
        self.log(f"WARNING: {event['message']}")
        logger.warning(event["message"])


class SampleCallback(TrainerCallback):
    """At each evaluation, greedy answers for a few held-out rows and the recipe's clauses, appended
    to a JSONL file (step, kind, instruction, reference, answer, parses) so progress can be read,
    not just plotted. The share of answers that parse in the audit format is logged as
    `eval_format_rate` through `log_metrics` (the trainer's `log`: trackers, log history)."""

    def __init__(
        self,
        tokenizer: Any,
        system_prompt: str,
        prompts: list[dict[str, str]],
        max_new_tokens: int,
        path: Path,
        log: Callable[[str], None],
    ):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.path = path
        self.log = log
        self.log_metrics: Callable[[dict[str, float]], None] | None = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None or not self.prompts or not state.is_world_process_zero:
            return  # several ranks: rank 0 samples and writes, the others train on
        started = time.perf_counter()
        answers = [self.generate(model, p["instruction"]) for p in self.prompts]
        parses = [parse_audit(a) is not None for a in answers]
        lines = "".join(
            json.dumps(
                {"step": state.global_step, **prompt, "answer": answer, "parses": ok},
                ensure_ascii=False,
            )
            + "\n"
            for prompt, answer, ok in zip(self.prompts, answers, parses, strict=True)
        )
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)  # one write: a kill tears at most the last line (trim_samples drops it)
        rate = sum(parses) / len(parses)
        first = answers[0].splitlines()[0] if answers[0].strip() else "(empty)"
        self.log(
            f"step {state.global_step}: {len(answers)} samples in {time.perf_counter() - started:.1f}s, "
            f"{rate:.0%} in the audit format; first: {first[:100]}"
        )
        if self.log_metrics is not None:
            self.log_metrics({FORMAT_RATE_KEY: rate})

    def generate(self, model: Any, instruction: str) -> str:
        import torch

        messages = chat_messages(self.system_prompt, instruction)
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
        finally:
            model.train(was_training)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


class LoraHistogramCallback(TrainerCallback):
    """Histograms of the LoRA A and B weights per adapted module kind, sent to W&B at each evaluation
    (how far the adapter has moved from its initialisation, where B starts at zero)."""

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        wandb = sys.modules.get("wandb")
        if model is None or wandb is None or getattr(wandb, "run", None) is None:
            return
        import torch

        groups: dict[str, list[Any]] = {}
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                module_kind = name.split(".lora_")[0].rsplit(".", 1)[-1]  # e.g. q_proj
                matrix = "lora_A" if "lora_A" in name else "lora_B"
                groups.setdefault(f"lora/{module_kind}.{matrix}", []).append(
                    param.detach().float().flatten().cpu()
                )
        logs = {key: wandb.Histogram(torch.cat(values).numpy()) for key, values in groups.items()}
        if logs:
            wandb.log({**logs, "train/global_step": state.global_step})

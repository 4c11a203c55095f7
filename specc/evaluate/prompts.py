"""Prompts and references from the dataset's own format, tokenized the way training tokenizes them.

- prompt_completion: the prompt → the completion.
- chat: every turn before the last assistant message, through the tokenizer's chat template with the
  generation prompt → that message's content.
- text: the task's prompt_field → reference_field (keys on each JSONL line).
"""
from __future__ import annotations

from dataclasses import dataclass

from specc.data.batches import eval_example_indices
from specc.data.tokenize import chat_generation_prompts, chat_token_ids, prompt_token_ids
from specc.errors import UserError


@dataclass(frozen=True)
class EvalExample:
    index: int              # position in the split's file (0-based)
    prompt: str             # the text the model continues (for samples.jsonl)
    prompt_ids: list[int]
    reference: str
    example: dict           # the JSONL line, for custom scorers and choice options


def task_examples(task, fmt: str, examples: list[dict], tokenizer, limit: int | None = None) -> list[EvalExample]:
    """The task's examples of its split: a fixed sample of `limit` (task.limit by default), in file order."""
    limit = task.limit if limit is None else limit
    chosen = eval_example_indices(len(examples), limit)
    rows = [examples[i] for i in chosen]
    if fmt == "prompt_completion":
        prompts, refs = [r["prompt"] for r in rows], [r["completion"] for r in rows]
        ids = prompt_token_ids(tokenizer, prompts)
    elif fmt == "chat":
        cut = [_before_last_answer(r["messages"], i) for i, r in zip(chosen, rows)]
        prompts = chat_generation_prompts(tokenizer, [c for c, _ in cut])
        refs = [a for _, a in cut]
        ids = chat_token_ids(tokenizer, prompts)
    elif fmt == "text":
        if not task.prompt_field:
            raise UserError(f"task {task.name!r}: format 'text' has no prompt or reference of its own",
                            hint="give the task prompt_field and reference_field (keys of each JSONL line)")
        missing = [i + 1 for i, r in zip(chosen, rows)
                   if not isinstance(r.get(task.prompt_field), str) or not isinstance(r.get(task.reference_field), str)]
        if missing:
            raise UserError(f"task {task.name!r}: {len(missing)} example(s) lack string keys {task.prompt_field!r} "
                            f"and {task.reference_field!r} (lines {', '.join(map(str, missing[:10]))})",
                            hint="every line the task scores needs both keys")
        prompts, refs = [r[task.prompt_field] for r in rows], [r[task.reference_field] for r in rows]
        ids = prompt_token_ids(tokenizer, prompts)
    else:
        raise UserError(f"unknown data format {fmt!r}")
    return [EvalExample(i, p, list(t), ref, row) for i, p, t, ref, row in zip(chosen, prompts, ids, refs, rows)]


def _before_last_answer(messages: list[dict], index: int) -> tuple[list[dict], str]:
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise UserError(f"line {index + 1}: a chat example without an assistant message has no reference")
    return messages[:last], messages[last]["content"]

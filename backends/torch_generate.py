"""Generation on the torch backend: transformers' `generate` on the (PEFT-wrapped) model, batched and left-padded,
with a KV cache; greedy unless the settings sample. The model's train/eval mode and torch's RNG are put back
afterwards, so scoring during training changes nothing a resumed run would see."""
from __future__ import annotations

from backends.protocol import GenerationSettings


def generate(backend, prompts: list[list[int]], settings: GenerationSettings) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class StopSequences(StoppingCriteria):
        """A row is done when its new tokens end with a stop string's tokens (transformers stops finished rows)."""

        def __init__(self, start: int):
            self.start, self.seqs = start, [torch.tensor(s) for s in settings.stop_ids if s]

        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            new = input_ids[:, self.start:]
            for seq in self.seqs:
                if new.shape[1] >= len(seq):
                    done |= (new[:, -len(seq):] == seq.to(new.device)).all(dim=1)
            return done

    model, device = backend.model, backend.device
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.temperature > 0,
                              temperature=settings.temperature if settings.temperature > 0 else None,
                              top_p=settings.top_p if settings.temperature > 0 else None, top_k=None,
                              pad_token_id=settings.pad_id, eos_token_id=list(settings.eos_ids) or None,
                              use_cache=True)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))   # similar lengths pad less
    out: dict[int, list[int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            for k in range(0, len(order), settings.batch_size):
                chunk = order[k:k + settings.batch_size]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.full((len(chunk), width), settings.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):                         # left padding: the answers start aligned
                    ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]):] = 1
                stops = StoppingCriteriaList([StopSequences(width)]) if settings.stop_ids else None
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=config, stopping_criteria=stops)
                for row, i in enumerate(chunk):
                    out[i] = _until_eos(gen[row, width:].tolist(), settings)
    finally:
        if was_training:
            model.train()
    return [out[i] for i in range(len(prompts))]


def _until_eos(tokens: list[int], settings: GenerationSettings) -> list[int]:
    for k, t in enumerate(tokens):
        if t in settings.eos_ids:
            return tokens[:k]
    return tokens

"""Generation on the MLX backend: mlx-lm's BatchGenerator (continuous batching, KV cache) on the model with its
LoRA layers in place (no fusing), greedy unless the settings sample. The train/eval mode and MLX's RNG are put
back afterwards."""
from __future__ import annotations

from backends.protocol import GenerationSettings


def generate(backend, prompts: list[list[int]], settings: GenerationSettings) -> list[list[int]]:
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    model = backend.model
    stops = [[t] for t in settings.eos_ids] + [list(s) for s in settings.stop_ids if s]
    saved_key = [int(k) for k in mx.random.state[0].tolist()]   # restored by seeding, as load_state does
    sampler = None
    if settings.temperature > 0:
        mx.random.seed(settings.seed)
        sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p)
    model.eval()
    results: dict[int, list[int]] = {}
    try:
        gen = BatchGenerator(model, stop_tokens=stops or None, sampler=sampler,
                             completion_batch_size=settings.batch_size,
                             prefill_batch_size=min(settings.batch_size, 8))
        try:
            uids = gen.insert(prompts, [settings.max_new_tokens] * len(prompts))
            results = {uid: [] for uid in uids}
            while responses := gen.next_generated():
                for r in responses:
                    if r.finish_reason != "stop":      # the stop token itself is not part of the answer
                        results[r.uid].append(int(r.token))
        finally:
            gen.close()
    finally:
        model.train()
        mx.random.seed((saved_key[0] << 32) | saved_key[1])
    return [_until_eos(results[uid], settings) for uid in uids]


def _until_eos(tokens: list[int], settings: GenerationSettings) -> list[int]:
    for k, t in enumerate(tokens):
        if t in settings.eos_ids:
            return tokens[:k]
    return tokens

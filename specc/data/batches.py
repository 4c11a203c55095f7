"""Deterministic micro-batches from token sequences, identical for every backend.

Order. Epoch e visits the sequences in the permutation `numpy.random.default_rng([seed, e])`. The
order depends only on (seed, epoch), so a resumed run needs nothing but its position (epoch, index)
to continue with exactly the batch that would have come next.

Rows. With packing, sequences are packed greedily in that order into rows of max_length tokens: a
sequence joins the current row if it fits, else it starts a new one. Each packed sequence is a
segment (ids 1..k) whose positions restart at 0; attention is block-diagonal by segment, so packing
changes nothing a document sees. Padding only fills a row's tail. Without packing, each row holds one
sequence and a batch is padded to its longest sequence rounded up to a multiple of 8 (fewer distinct
shapes to compile for, tensor-core friendly), but never beyond max_length.

Batches are batch_size consecutive rows. The last batch of an epoch keeps whatever rows are left (it
may have fewer rows): every sequence is trained on every epoch, and since the engine normalises the
loss by the target tokens of a step, a smaller batch is not over-weighted. Greedy packing depends on
the order, so with packing the number of batches can differ slightly from epoch to epoch: ask
batches_per_epoch(epoch), or total_batches(epochs) for a schedule.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from backends.protocol import Batch
from specc.data.tokenize import Sequence
from specc.errors import UserError

PAD_TO_MULTIPLE = 8


class BatchPlan:
    """Which sequences make up batch (epoch, index), and the Batch itself, computed on demand."""

    def __init__(self, sequences: list[Sequence], *, batch_size: int, max_length: int, packing: bool,
                 pad_id: int, seed: int):
        if not sequences:
            raise UserError("no sequences to train on", hint="check the tokenization report for dropped examples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._rows = _RowBuilder(sequences, max_length, packing, pad_id)
        self.batch_size, self.max_length, self.packing = batch_size, max_length, packing
        self.seed = seed
        self._layout_epoch: int | None = None
        self._layout: list[list[int]] = []

    def order(self, epoch: int) -> np.ndarray:
        """Indices of the sequences in the order epoch `epoch` visits them."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._rows.sequences))

    def rows(self, epoch: int) -> list[list[int]]:
        """The epoch's rows, each a list of sequence indices (one per row without packing)."""
        if self._layout_epoch != epoch:   # one epoch cached: training walks epochs in order
            self._layout = self._rows.layout(self.order(epoch))
            self._layout_epoch = epoch
        return self._layout

    def batches_per_epoch(self, epoch: int) -> int:
        return -(-len(self.rows(epoch)) // self.batch_size)

    def total_batches(self, epochs: int) -> int:
        return sum(self.batches_per_epoch(e) for e in range(epochs))

    def steps_for_epochs(self, epochs: float, grad_accum: int) -> int:
        """Optimizer steps that cover `epochs` passes over the rows (packed rows when packing): the one
        count that plan, compile and run all use. Greedy packing follows each epoch's order, so whole
        epochs are counted exactly and a fraction is taken of the next one."""
        whole = math.floor(epochs)
        return epoch_steps(self.total_batches(whole), self.batches_per_epoch(whole), epochs, grad_accum)

    def steps_source(self, epochs: float, grad_accum: int) -> str:
        rows = len(self.rows(0))
        what = f"{rows:,} packed rows" if self.packing else f"{rows:,} rows (one sequence each)"
        return (f"counted: {epochs:g} epochs × {self.batches_per_epoch(0):,} batches per epoch ({what} ÷ batch "
                f"{self.batch_size}) ÷ accumulation {grad_accum}, from the tokenized train split")

    def batch_at(self, epoch: int, index: int) -> Batch:
        n = self.batches_per_epoch(epoch)
        if not 0 <= index < n:
            raise IndexError(f"batch {index} of epoch {epoch}: the epoch has {n} batches")
        start = index * self.batch_size
        return self._rows.batch(self.rows(epoch)[start:start + self.batch_size])

    def packing_efficiency(self, epoch: int = 0) -> float:
        """Non-padding tokens / (rows x T) over the epoch's batches."""
        rows = self.rows(epoch)
        chunks = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        return self._rows.efficiency(chunks)


def epoch_steps(batches_before: int, batches_in_last: int, epochs: float, grad_accum: int) -> int:
    """Steps for `epochs`: the batches of the whole epochs, a rounded share of the next one's, ÷ accumulation."""
    fraction = epochs - math.floor(epochs)
    return max(1, (batches_before + round(batches_in_last * fraction)) // grad_accum)


class BatchStream(Iterator[Batch]):
    """Endless batches over epochs. state() is {"epoch", "index"} of the next batch; restore(state)
    continues with exactly that batch."""

    def __init__(self, plan: BatchPlan, epoch: int = 0, index: int = 0):
        self.plan = plan
        self.restore({"epoch": epoch, "index": index})

    def __next__(self) -> Batch:
        batch = self.plan.batch_at(self.epoch, self.index)
        self.index += 1
        if self.index == self.plan.batches_per_epoch(self.epoch):
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        n = self.plan.batches_per_epoch(epoch)
        if epoch < 0 or not 0 <= index < n:
            raise UserError(f"cannot resume at epoch {epoch}, batch {index}: that epoch has {n} batches",
                            hint="the data, max_length, batch size or packing changed since the checkpoint; "
                                 "restore them, or start a new run (--init-from keeps the adapter weights)")
        self.epoch, self.index = epoch, index


# The validation sample is drawn with its own fixed seed, not training.seed: runs of a sweep that differ
# in seed, batch size or anything else are validated on the very same examples.
EVAL_SAMPLE_SEED = 20240917


def eval_example_indices(n_examples: int, limit: int | None) -> list[int]:
    """Which examples of a split are evaluated: all of them, or a fixed random sample of `limit`, in file order.

    The choice depends only on the split's size and `limit`, never on the batch size or the run, so every
    run of an experiment and of its baseline sees the same examples."""
    if limit is None or limit >= n_examples:
        return list(range(n_examples))
    chosen = np.random.default_rng(EVAL_SAMPLE_SEED).choice(n_examples, size=limit, replace=False)
    return sorted(int(i) for i in chosen)


def eval_batches(sequences: list[Sequence], *, batch_size: int, max_length: int, packing: bool,
                 pad_id: int) -> list[Batch]:
    """Evaluation batches over all of `sequences`, in order (no shuffle)."""
    if not sequences:
        return []
    builder = _RowBuilder(sequences, max_length, packing, pad_id)
    rows = builder.layout(np.arange(len(sequences)))
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return [builder.batch(chunk) for chunk in chunks]


def packing_efficiency(batches: list[Batch]) -> float:
    """Non-padding tokens / (rows x T) over already built batches (e.g. eval_batches)."""
    total = sum(b.input_ids.size for b in batches)
    return sum(b.n_tokens for b in batches) / total if total else 0.0


class _RowBuilder:
    """Lays sequences out in rows and turns rows into Batch arrays."""

    def __init__(self, sequences: list[Sequence], max_length: int, packing: bool, pad_id: int):
        too_long = next((len(s) for s in sequences if len(s) > max_length), None)
        if too_long is not None:
            raise ValueError(f"a sequence of {too_long} tokens exceeds max_length={max_length}; "
                             "tokenize with the same max_length")
        self.sequences = sequences
        self.max_length = max_length
        self.packing = packing
        self.pad_id = pad_id
        self._lengths = [len(s) for s in sequences]
        self._positions = np.arange(max_length, dtype=np.int32)

    def layout(self, order: np.ndarray) -> list[list[int]]:
        if not self.packing:
            return [[i] for i in order.tolist()]
        rows: list[list[int]] = [[]]
        used = 0
        for i in order.tolist():
            n = self._lengths[i]
            if used + n > self.max_length:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += n
        return rows

    def width(self, rows: list[list[int]]) -> int:
        if self.packing:
            return self.max_length
        longest = max(self._lengths[row[0]] for row in rows)
        return min(-(-longest // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE, self.max_length)

    def efficiency(self, chunks: list[list[list[int]]]) -> float:
        tokens = sum(self._lengths[i] for rows in chunks for row in rows for i in row)
        return tokens / sum(len(rows) * self.width(rows) for rows in chunks)

    def batch(self, rows: list[list[int]]) -> Batch:
        shape = (len(rows), self.width(rows))
        input_ids = np.full(shape, self.pad_id, dtype=np.int32)
        loss_mask = np.zeros(shape, dtype=np.float32)
        segment_ids = np.zeros(shape, dtype=np.int32)
        position_ids = np.zeros(shape, dtype=np.int32)
        for r, row in enumerate(rows):
            col = 0
            for segment, i in enumerate(row, start=1):
                seq, end = self.sequences[i], col + self._lengths[i]
                input_ids[r, col:end] = seq.token_ids
                loss_mask[r, col:end] = seq.target_mask   # target_mask[0] == 0: no target at a segment start
                segment_ids[r, col:end] = segment
                position_ids[r, col:end] = self._positions[:end - col]
                col = end
        return Batch(input_ids=input_ids, loss_mask=loss_mask, segment_ids=segment_ids, position_ids=position_ids)

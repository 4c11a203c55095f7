import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specc.data.batches import (PAD_TO_MULTIPLE, BatchPlan, BatchStream, eval_batches, eval_example_indices,
                                 packing_efficiency)
from specc.data.tokenize import Sequence
from specc.errors import UserError

PAD = 0


def make_sequences(lengths: list[int], seed: int = 0) -> list[Sequence]:
    """Sequences with distinct token ids (so each can be recognised) and random target masks."""
    rng = np.random.default_rng(seed)
    out, next_id = [], 1
    for n in lengths:
        mask = (0, *rng.integers(0, 2, n - 1).tolist())
        out.append(Sequence(tuple(range(next_id, next_id + n)), mask))
        next_id += n
    return out


@st.composite
def plans(draw):
    max_length = draw(st.integers(2, 24))
    lengths = draw(st.lists(st.integers(1, max_length), min_size=1, max_size=40))
    sequences = make_sequences(lengths, seed=draw(st.integers(0, 1000)))
    plan = BatchPlan(sequences, batch_size=draw(st.integers(1, 5)), max_length=max_length,
                     packing=draw(st.booleans()), pad_id=PAD, seed=draw(st.integers(0, 2**32 - 1)))
    return plan, sequences


def epoch_batches(plan: BatchPlan, epoch: int):
    return [plan.batch_at(epoch, i) for i in range(plan.batches_per_epoch(epoch))]


def segments(batch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (token ids, target mask) of every segment, row by row, checking row invariants on the way."""
    out = []
    for ids, mask, seg, pos in zip(batch.input_ids, batch.loss_mask, batch.segment_ids, batch.position_ids):
        n_real = int((seg > 0).sum())
        assert (seg[n_real:] == 0).all() and (ids[n_real:] == PAD).all()       # padding only at the tail
        assert (mask[n_real:] == 0).all() and (pos[n_real:] == 0).all()
        assert n_real > 0
        boundaries = [0, *np.flatnonzero(np.diff(seg[:n_real])) + 1, n_real]
        for k, (a, b) in enumerate(zip(boundaries, boundaries[1:]), start=1):
            assert (seg[a:b] == k).all()                                       # ids 1..k, segments contiguous
            assert (pos[a:b] == np.arange(b - a)).all()                        # positions restart per segment
            assert mask[a] == 0                                                # no target at a segment start
            out.append((tuple(ids[a:b].tolist()), tuple(int(m) for m in mask[a:b])))
    return out


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(0, 5))
def test_every_sequence_appears_once_in_order_and_intact(plan_and_sequences, epoch):
    plan, sequences = plan_and_sequences
    batches = epoch_batches(plan, epoch)
    got = [s for b in batches for s in segments(b)]
    assert got == [(sequences[i].token_ids, sequences[i].target_mask) for i in plan.order(epoch)]
    for b in batches:
        assert b.input_ids.dtype == np.int32 and b.segment_ids.dtype == np.int32
        assert b.position_ids.dtype == np.int32 and b.loss_mask.dtype == np.float32
        assert (b.loss_mask[:, 0] == 0).all()
    # All batches are full except perhaps the last, which is kept.
    assert all(b.input_ids.shape[0] == plan.batch_size for b in batches[:-1])
    assert 1 <= batches[-1].input_ids.shape[0] <= plan.batch_size


@settings(max_examples=100, deadline=None)
@given(plans(), st.integers(0, 5))
def test_row_width_and_greedy_packing(plan_and_sequences, epoch):
    plan, sequences = plan_and_sequences
    max_length = plan.max_length
    batches = epoch_batches(plan, epoch)
    if plan.packing:
        assert all(b.input_ids.shape[1] == max_length for b in batches)
        rows = plan.rows(epoch)
        for row, following in zip(rows, rows[1:]):   # a new row starts only when the next sequence did not fit
            assert sum(len(sequences[i]) for i in row) + len(sequences[following[0]]) > max_length
    else:
        for b in batches:
            longest = int((b.segment_ids > 0).sum(axis=1).max())
            width = b.input_ids.shape[1]
            assert longest <= width <= max_length
            assert width == max_length or (width % PAD_TO_MULTIPLE == 0 and width - longest < PAD_TO_MULTIPLE)
            assert (b.segment_ids.max(axis=1) == 1).all()   # one sequence per row
    tokens = sum(b.n_tokens for b in batches)
    assert plan.packing_efficiency(epoch) == pytest.approx(tokens / sum(b.input_ids.size for b in batches))
    assert plan.packing_efficiency(epoch) == pytest.approx(packing_efficiency(batches))


def test_order_depends_only_on_seed_and_epoch():
    sequences = make_sequences([3] * 50)
    a = BatchPlan(sequences, batch_size=4, max_length=16, packing=True, pad_id=PAD, seed=7)
    b = BatchPlan(sequences, batch_size=4, max_length=16, packing=True, pad_id=PAD, seed=7)
    other_seed = BatchPlan(sequences, batch_size=4, max_length=16, packing=True, pad_id=PAD, seed=8)
    assert (a.order(3) == b.order(3)).all()
    assert (a.order(3) == np.random.default_rng([7, 3]).permutation(50)).all()
    assert not (a.order(0) == a.order(1)).all() and not (a.order(0) == other_seed.order(0)).all()
    # Asking for epochs in any order gives the same batches.
    later_first = b.batch_at(2, 1)
    for x, y in zip(epoch_batches(a, 0) + [a.batch_at(2, 1)], epoch_batches(b, 0) + [later_first]):
        assert all((getattr(x, f) == getattr(y, f)).all() for f in ("input_ids", "loss_mask", "segment_ids",
                                                                      "position_ids"))


@settings(max_examples=100, deadline=None)
@given(plans(), st.data())
def test_resume_from_state_continues_with_the_same_batches(plan_and_sequences, data):
    plan, _ = plan_and_sequences
    horizon = plan.total_batches(3)
    split = data.draw(st.integers(0, horizon - 1))
    after = data.draw(st.integers(1, horizon))
    stream = BatchStream(plan)
    for _ in range(split):
        next(stream)
    state = stream.state()
    expected = [next(stream) for _ in range(after)]
    resumed = BatchStream(plan)
    resumed.restore(dict(state))
    for want in expected:
        got = next(resumed)
        assert (got.input_ids == want.input_ids).all() and (got.loss_mask == want.loss_mask).all()
        assert (got.segment_ids == want.segment_ids).all() and (got.position_ids == want.position_ids).all()
    assert resumed.state() == stream.state()


def test_stream_walks_epochs_and_state_is_plain_ints():
    plan = BatchPlan(make_sequences([4] * 5), batch_size=2, max_length=8, packing=False, pad_id=PAD, seed=0)
    stream = BatchStream(plan)
    states = []
    for _ in range(7):
        states.append(stream.state())
        next(stream)
    assert states == [{"epoch": e, "index": i} for e in (0, 1, 2) for i in (0, 1, 2)][:7]
    assert plan.batches_per_epoch(0) == 3 and plan.batch_at(0, 2).input_ids.shape == (1, 8)


def test_restore_past_the_end_of_an_epoch_is_a_user_error():
    plan = BatchPlan(make_sequences([4] * 5), batch_size=2, max_length=8, packing=False, pad_id=PAD, seed=0)
    with pytest.raises(UserError, match="epoch 0, batch 3: that epoch has 3 batches"):
        BatchStream(plan).restore({"epoch": 0, "index": 3})


def test_packing_fills_rows_and_reports_efficiency():
    plan = BatchPlan(make_sequences([3, 3, 3, 3]), batch_size=2, max_length=6, packing=True, pad_id=PAD, seed=0)
    [batch] = epoch_batches(plan, 0)
    assert batch.segment_ids.tolist() == [[1, 1, 1, 2, 2, 2]] * 2
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2]] * 2
    assert plan.packing_efficiency() == 1.0


def test_unpacked_rows_pad_to_a_multiple_of_eight():
    plan = BatchPlan(make_sequences([3, 9]), batch_size=2, max_length=12, packing=False, pad_id=PAD, seed=0)
    assert plan.batch_at(0, 0).input_ids.shape == (2, 12)      # 9 -> 16, capped at max_length
    plan = BatchPlan(make_sequences([3, 5]), batch_size=2, max_length=12, packing=False, pad_id=PAD, seed=0)
    assert plan.batch_at(0, 0).input_ids.shape == (2, 8)
    assert plan.packing_efficiency() == 8 / 16


def test_eval_batches_are_in_file_order():
    sequences = make_sequences([2, 3, 4, 5, 6])
    batches = eval_batches(sequences, batch_size=2, max_length=8, packing=False, pad_id=PAD)
    assert [s for b in batches for s in segments(b)] == [(s.token_ids, s.target_mask) for s in sequences]
    packed = eval_batches(sequences, batch_size=1, max_length=8, packing=True, pad_id=PAD)
    assert [b.segment_ids.max() for b in packed] == [2, 1, 1, 1]   # [2+3], [4], [5], [6]
    assert eval_batches([], batch_size=2, max_length=8, packing=True, pad_id=PAD) == []


def test_bad_inputs():
    with pytest.raises(UserError, match="no sequences"):
        BatchPlan([], batch_size=1, max_length=8, packing=True, pad_id=PAD, seed=0)
    with pytest.raises(ValueError, match="exceeds max_length"):
        BatchPlan(make_sequences([9]), batch_size=1, max_length=8, packing=True, pad_id=PAD, seed=0)
    with pytest.raises(ValueError, match="mask"):
        Sequence((1, 2), (1, 1))


def test_the_evaluation_sample_is_fixed_and_independent_of_the_run():
    """eval_examples picks the same examples whatever the batch size, seed or run: a fixed sample, in file order."""
    assert eval_example_indices(10, None) == list(range(10))
    assert eval_example_indices(10, 50) == list(range(10))
    chosen = eval_example_indices(1000, 64)
    assert len(chosen) == 64 == len(set(chosen)) and chosen == sorted(chosen)
    assert chosen == eval_example_indices(1000, 64)          # a pure function of (size, limit)
    assert chosen != list(range(64))                         # a sample, not the file's head (files are often sorted)

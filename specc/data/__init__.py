"""Datasets: read and validate JSONL (jsonl), tokenize with target masks (tokenize), batch (batches)."""
from specc.data.batches import BatchPlan, BatchStream, eval_batches, packing_efficiency
from specc.data.jsonl import FORMATS, DatasetReport, SplitReport, load_dataset, read_examples, verify_dataset
from specc.data.tokenize import Sequence, TokenizationReport, encode, pad_token_id, tokenize_split

__all__ = [
    "FORMATS", "BatchPlan", "BatchStream", "DatasetReport", "Sequence", "SplitReport", "TokenizationReport",
    "encode", "eval_batches", "load_dataset", "pad_token_id", "packing_efficiency", "read_examples",
    "tokenize_split", "verify_dataset",
]

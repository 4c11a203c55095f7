"""specc: experiment specs for LoRA/QLoRA fine-tuning, compiled into reviewable artifacts and run."""
__version__ = "0.1.0"

"""Hand compiled experiments to SLURM: resource choice, submission, job records, the test-stage gate, status.

Nothing here imports torch: these modules run on login nodes and in the first seconds of a job.
"""

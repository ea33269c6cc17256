"""``audit run``: probe x dataset x backend -> batches -> the run store.

``runner.run_probe`` drives one process (resume, shards, progress); ``executor`` turns a batch of
samples into rows with one backend; ``prefetch`` decodes images ahead; ``placement`` reads
launchers' environments (torchrun, SLURM); ``ray_launch`` spreads shards over a Ray cluster. Every
process of a sharded run runs ``run_probe`` for its own shard into the same run directory.
"""

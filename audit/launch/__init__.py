"""Running one probe as many processes: launchers' environments, Ray, and the shared run directory.

Every process of a sharded run (torchrun / ``accelerate launch`` ranks, SLURM array tasks, Ray
actors) runs ``run_probe`` for its own ``Shard`` into the same run directory. Parts need no
coordination (each is a new file); the manifest and compaction do, through ``run_lock``.
"""

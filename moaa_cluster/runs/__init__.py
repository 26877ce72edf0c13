"""Run directories: atomic files, result shards, rejects and the one manifest every task writes."""

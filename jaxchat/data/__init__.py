"""Data: downloads, FineWeb shards, task files and the grain input pipelines."""

"""Parallel corpora: shard records, converters, the streaming training loader and the teacher cache."""

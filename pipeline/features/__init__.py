"""Feature files: Parquet shards, failure records, importing published features."""

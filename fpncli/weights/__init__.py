"""The weights registry (pure data), safe checkpoint reading, the cache, synthetic files."""

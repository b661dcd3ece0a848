"""The weights registry (pure data), safe checkpoint reading and the file layouts, the
architecture and strict loading, the cache, synthetic files."""

"""Meta-World: benchmark task sets, env construction, and the verified fast stepping path."""

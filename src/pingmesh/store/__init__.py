"""Storage: the raw probe store (Parquet, partitioned by hour) and the results database."""

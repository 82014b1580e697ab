"""The collector: accepts result batches, deduplicates them, appends them to the raw store."""

"""Stage 2: rows from a source -> normalised examples -> splits -> (tokens, loss mask) -> batches."""

"""Quality measurements: perplexity with sparsity, against the dense model on the same windows."""

"""Model registry: pre-processing (tokenizers) and post-processing (pooling)."""

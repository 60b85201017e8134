"""llm-compression-harness."""

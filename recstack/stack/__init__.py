"""recstack/stack."""

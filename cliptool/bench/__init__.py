"""`python -m cliptool.bench`: benchmarks that print the README's tables."""

"""`python -m cliptool.bench`: benchmarks that print the tables of docs/benchmarks.md."""

"""Queries (terms, weights, filters), ranking and merging windows into moments, similar scenes."""

"""Building and keeping an index: an index run (indexer, worker), its Ray pool (cluster), and
`check` over the stores and their derived caches."""

"""Tools over one shared runner: the quickstart, the results table and the benchmark."""

"""``make bench``: roomhub under k6 load in each hub mode, summarised in results/bench.md."""

"""Metrics: counters kept on the verdict path as plain ints (counts), what the exporter
reads at scrape time (sources), and the Prometheus exporter itself (exporter)."""

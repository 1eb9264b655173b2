"""engine-bench: throughput and latency of an engine, beside HuggingFace and the roofline."""

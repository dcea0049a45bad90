"""Output side: message schemas, ZeroMQ publishing, Prometheus metrics."""

"""Measuring one candidate: latency on a device, accuracy on data, cost counts."""

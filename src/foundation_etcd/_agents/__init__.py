"""Cluster features: agents, registry, membership, scheduler, node runtime, the cluster."""

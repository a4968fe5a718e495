"""The network side of radfed: jobs, fan-out over the bus, exact aggregation, federated algorithms."""

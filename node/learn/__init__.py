"""Site side of federated learning (issue 9): policy-checked training data for the Flower ClientApp
(:mod:`.data`), the ClientApp itself (:mod:`.clientapp`) and the supervised SuperNode
(:mod:`.supernode`).  The disclosure policy is the node's (node.toml ``[policy]`` and ``[learning]``),
never code the coordinator ships."""

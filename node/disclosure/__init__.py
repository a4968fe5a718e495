"""Disclosure control at a site: one module per mechanism, and the order in which they run.

Before a request runs (node/agent.py, node/execute.py):

1. :mod:`node.disclosure.requests` -- the signed request names this site, is valid now, and its nonce
   is new (else MISDIRECTED / STALE / REPLAYED, audited).

After the analysis computed its exact result, before anything leaves the node (node/execute.py):

2. :mod:`node.disclosure.shapes` -- release shapes that do not depend on the protected data: a zero
   and a small count both read "< k"; categories come from the spec; quantile counts only when both
   sides hold >= k persons; model covariates have >= k persons on each side.
3. :mod:`node.disclosure.auditor` -- the site-wide release auditor: every released count, sum, sum
   of squares and cross-product is a linear function of per-person values; refuse a release that,
   with everything released before (to anyone), determines a small group's value or a suppressed cell.

docs/node-policy.md describes each mechanism for a site administrator; docs/threat-model.md says what
each guarantees against whom, and what it cannot.
"""

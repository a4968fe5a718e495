"""Disclosure control at a site: one module per mechanism, and the ONE place that says in which order
they run.  The code that runs them is node/bus_handler.py (steps 1-2) and
node/execute.py:run_request (steps 3-12); if you change the order there, change it here.

Before a request runs (node/bus_handler.py):

1. signature -- the request is signed by the coordinator's enrolled Ed25519 key (cdm/wire.py), else
   it is rejected (BAD_SIGNATURE) without running; it carries a request id and a spec (BAD_SPEC).
2. :mod:`node.disclosure.requests` -- the signed request names this site, is valid now, and its nonce
   is new (else MISDIRECTED / STALE / REPLAYED, audited).

Before any data is read (node/execute.py:run_request):

3. the spec parses (else BAD_SPEC); a locked round's ``beta`` is the algorithm's (node/secure.py).
4. rate limit -- at most ``max_requests_per_hour`` per requester (RATE_LIMIT; node/state.py).
5. :mod:`node.disclosure.policy` -- the analysis is on the site's allowlist (NOT_ALLOWED) and within
   the site's limits (:meth:`~node.disclosure.policy.Policy.check_limits`); a secure share
   (node/secure.py) is refused where the site adds noise.
6. :mod:`node.disclosure.noise` precheck -- noise covers this analysis kind, else refused.
7. :mod:`node.disclosure.approvals` -- manual approval by the site administrator, if required.
8. :mod:`node.disclosure.noise` budget -- the requester has privacy budget left.

Then the cohort is compiled and run (unknown codes refused or warned), and the kind's site half
computes its result, with the release shapes of:

9. :mod:`node.disclosure.shapes` -- release shapes that do not depend on the protected data: a zero
   and a small count both read "< k"; categories come from the spec; quantile counts only when both
   sides hold >= k persons; model covariates have >= k persons on each side.

After the exact result exists, before anything leaves the node (under ``state.release_lock``, check
and record as one step):

10. linked releases and differencing -- a quantile round's thresholds audited one by one
    (:mod:`node.disclosure.release_history`); the linked-table audit of suppressed cells released to
    this requester (:func:`node.disclosure.policy.recoverable_cells`); cohorts within
    ``differencing_k`` of one released before (node/state.py).
11. :mod:`node.disclosure.auditor` (through :mod:`node.disclosure.release_history`) -- the site-wide
    release auditor: every released count, sum, sum of squares and cross-product is a linear
    function of per-person values; refuse a release that, with everything released before (to
    anyone), determines a small group's value or a suppressed cell.
12. :mod:`node.disclosure.noise` -- Laplace noise on what is released, and the budget charged; a
    data-dependent refusal is charged too.

Every outcome, released or refused, is appended to the audit log (node/audit.py) and the response
signed with the site's key.  A secure (masked) share skips steps 10-12 except differencing: nothing
about this site alone leaves it, and the pooled sum is checked by every site (node/secure.py).

docs/node-policy.md describes each mechanism for a site administrator; docs/threat-model.md says what
each guarantees against whom, and what it cannot.
"""

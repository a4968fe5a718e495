"""The site-wide release auditor: no set of releases, to anyone, determines a small group's value.

Every number a site releases about a set of persons S -- a count, a sum, a sum of squares, a
cross-product, a gradient or Hessian entry summed over S -- is ``sum over p in S of v_p`` for some
per-person quantity ``v_p``.  Whatever the quantity, a combination of releases over sets S_1..S_m
tells the sum over a group G exactly when the indicator of G lies in the span of the indicators of
the S_i (Chin & Ozsoyoglu, "Auditing and inference control in statistical databases", IEEE TSE
8(6), 1982; Dinur & Nissim, PODS 2003, for why many exact subset sums must be audited at all).
So the auditor keeps the indicators of everything released at this site -- across *all*
researchers, since colluding researchers pool what they were given -- and refuses a release after
which

* the persons of some group of 1..k-1 persons that the releases can tell apart (an *atom*, below)
  would have their sum determined, or
* a cell that was suppressed (a small cell of a table, a refused small count) would be determined.

**Atoms.**  Persons that were in exactly the same released sets are indistinguishable to every
release so far; they are grouped into atoms, and each release is a 0/1 vector over atoms.  The sum
of one person's value is determined only if their atom has one person and its unit vector is in the
span, so testing every atom of fewer than k persons covers every individual.  A new release splits
the atoms it cuts; the stored vectors are extended by copying the split atom's column.

**Exact arithmetic.**  The span is kept as a reduced row-echelon basis modulo the prime
``P = 2**31 - 1``.  In reduced form a unit vector e_a is in the span exactly when a is a pivot whose
row is e_a, and a 0/1 vector reduces with one pass over the pivots.  Each reduction modulo P
reproduces the rational elimination unless P divides a pivot chosen along the way; then GF(P) can
report a smaller rank than the rationals and could miss a dependency.  For 0/1 vectors this needs a
minor divisible by 2**31 - 1 and is vanishingly unlikely for cohorts that are not built for it;
docs/threat-model.md states it as a limit.

**Fast.**  One audit reads at most half the basis: a 0/1 vector's projection is the sum of the
rows whose pivot it holds, and when it holds most of them (a count over everyone holds all) the sum
of all rows, kept up to date at O(atoms) per new row, less the others.  Rows are added into one
accumulator without copying them, residues are reduced by Mersenne folds (2**31 = 1 mod P) instead
of divisions, a new pivot is eliminated only in the columns where its row is non-zero (the
residue is often sparse), and only rows whose pivot is a small atom are read for the unit-vector
test (in reduced form e_a can only be the row with pivot a).  Every step stays exact.

**Bounded.**  Memory is (rank x atoms) int64.  A release that would take the basis above
``max_entries`` is refused ``AUDIT_FULL`` (fail closed) until the site administrator starts a new
release period (``radfed-node audit new-period``), e.g. with a new data snapshot; releases already
in the span (repeats, unions of released cells) never grow it.  benchmarks/bench_auditor.py measures
the cost as the history grows.

What it does not cover: non-linear releases taken alone (medians of a cohort, a model's fitted
coefficients between rounds are functions of these sums and inherit their protection), emptiness
(a suppressed cell with no one in it has the zero vector: the attacker is conservatively credited
with knowing which atoms exist), and a refusal's own signal (denials depend on the data: see
docs/threat-model.md, "simulatable auditing").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from node.disclosure.policy import Refusal

P = 2_147_483_647  # the Mersenne prime 2**31 - 1: products of two residues fit in int64


@dataclass
class Verdict:
    """What a release would disclose: empty lists mean it may go."""

    small_atoms: list[int]          # atoms of 1..k-1 persons whose sum would be determined
    hidden_cells: list[int]         # suppressed cells (indexes into the history) that would be determined

    @property
    def safe(self) -> bool:
        return not self.small_atoms and not self.hidden_cells


def _person_set(ids) -> np.ndarray:
    """Sorted distinct int64 ids (a cohort frame is already in person order: no sort then)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])) else np.unique(ids)


def _inverse(x: int) -> int:
    return pow(int(x), P - 2, P)


def _fold(x: np.ndarray) -> np.ndarray:
    """``x mod P`` for int64 ``0 <= x < 2**62`` without a division, in place (``x`` is consumed):
    2**31 = 1 (mod 2**31 - 1), so the high bits fold onto the low ones (a Mersenne reduction;
    numpy's ``%`` divides, several times slower)."""
    high = np.right_shift(x, 31)
    np.bitwise_and(x, P, out=x)
    x += high
    np.right_shift(x, 31, out=high)
    np.bitwise_and(x, P, out=x)
    x += high
    np.subtract(x, P, out=x, where=x >= P)
    return x


def _positive(x: np.ndarray) -> np.ndarray:
    """``x mod P`` for ``-P < x < P`` (a difference of two residues), in place."""
    np.add(x, P, out=x, where=x < 0)
    return x


class ReleaseAuditor:
    """The span of everything released at one site (module docstring).

    The basis lives in a preallocated array that grows by doubling (rows: rank, columns: atoms), so
    one audit costs the rows it touches, not a copy of the whole history; an audit that is not
    committed is undone from a log of what it changed."""

    def __init__(self, min_cell: int, max_entries: int = 20_000_000):
        self.min_cell = min_cell
        self.max_entries = max_entries
        self.persons = np.zeros(0, dtype=np.int64)     # sorted ids of persons in any audited set
        self.atom_of = np.zeros(0, dtype=np.int64)     # their atom, or -1: in no set so far
        self.sizes = np.zeros(0, dtype=np.int64)       # persons per atom
        self._store = np.zeros((16, 64), dtype=np.int64)  # [:rank, :atoms]: reduced row-echelon basis mod P
        self.pivots = np.zeros(0, dtype=np.int64)      # pivot atom of each row
        self.hidden = np.zeros((0, 0), dtype=np.int64)  # suppressed small cells, reduced against the basis
        self.colsum = np.zeros(0, dtype=np.int64)      # sum of all basis rows mod P: a large release's shortcut
        self.releases = 0
        self._undo: list | None = None

    @property
    def atoms(self) -> int:
        return self.sizes.size

    @property
    def rank(self) -> int:
        return self.pivots.size

    @property
    def basis(self) -> np.ndarray:
        return self._store[:self.rank, :self.atoms]

    # ------------------------------------------------------------------ atoms

    def _locate(self, ids: np.ndarray) -> np.ndarray | None:
        """Positions of ``ids`` in :attr:`persons`; None after admitting persons new to the auditor
        (then every position found so far has moved)."""
        if ids.size == self.persons.size and np.array_equal(ids, self.persons):
            return np.arange(ids.size)  # the whole site: the commonest large release
        pos = np.searchsorted(self.persons, ids)
        if self.persons.size and np.array_equal(self.persons[np.minimum(pos, self.persons.size - 1)], ids):
            return pos
        persons = np.union1d(self.persons, ids)
        atom_of = np.full(persons.size, -1, dtype=np.int64)
        atom_of[np.searchsorted(persons, self.persons)] = self.atom_of
        self.persons, self.atom_of = persons, atom_of
        return None

    def _reserve(self, rows: int, columns: int) -> None:
        r, c = self._store.shape
        if rows <= r and columns <= c:
            return
        grown = np.zeros((max(r, rows if rows <= r else max(2 * r, rows)),
                          max(c, columns if columns <= c else max(2 * c, columns))), dtype=np.int64)
        grown[:self.rank, :self.atoms] = self.basis
        self._store = grown

    def _split(self, where: np.ndarray) -> None:
        """Refine the atoms so that the persons at positions ``where`` are a union of atoms."""
        atoms = self.atom_of[where]
        inside = np.bincount(atoms[atoms >= 0], minlength=self.atoms)
        cut = np.flatnonzero((inside > 0) & (inside < self.sizes))  # atoms partly in ids: split them
        fresh = atoms < 0                                             # persons in no set before
        n_new = cut.size + int(fresh.any())
        if not n_new:
            return
        old = self.atoms
        new_id = np.full(old + 1, -1, dtype=np.int64)  # [-1]: persons in no atom yet
        new_id[cut] = old + np.arange(cut.size)
        new_id[-1] = old + cut.size
        target = new_id[atoms]
        move = target >= 0
        self.atom_of[where[move]] = target[move]
        parents = np.concatenate([cut, [-1] if fresh.any() else []]).astype(np.int64)
        self._reserve(self.rank, old + n_new)
        known = parents >= 0
        block = np.zeros((self.rank, n_new), dtype=np.int64)
        block[:, known] = self._store[:self.rank, parents[known]]
        self._store[:self.rank, old:old + n_new] = block  # a split atom's column, copied
        extra_sum = np.zeros(n_new, dtype=np.int64)
        extra_sum[known] = self.colsum[parents[known]]
        self.colsum = np.concatenate([self.colsum, extra_sum])
        if self.hidden.shape[0]:
            extra = np.zeros((self.hidden.shape[0], n_new), dtype=np.int64)
            extra[:, known] = self.hidden[:, parents[known]]
            self.hidden = np.hstack([self.hidden, extra])
        self.sizes = np.bincount(self.atom_of[self.atom_of >= 0], minlength=old + n_new)

    def _vector(self, where: np.ndarray) -> np.ndarray:
        """The 0/1 vector over atoms of persons that are a union of atoms (after :meth:`_split`)."""
        return (np.bincount(self.atom_of[where], minlength=self.atoms) > 0).astype(np.int64)

    # ------------------------------------------------------------------ span

    def reduce(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` minus its projection on the span, mod P (one pass: the basis is reduced)."""
        if self.rank == 0:
            return vector % P
        coef = vector[self.pivots] % P
        basis = self.basis
        if coef.max() <= 1:  # a release's own 0/1 vector: the projection is a sum of basis rows
            chosen = coef.astype(bool)
            if 2 * int(chosen.sum()) <= self.rank:
                projection = _fold(self._sum_rows(np.flatnonzero(chosen)))
            else:  # most rows (a count over everyone: all): the sum of all rows less the others
                projection = _positive(self.colsum - _fold(self._sum_rows(np.flatnonzero(~chosen))))
        else:  # residues < 2**31: coef @ basis could overflow int64, so coef is split in 16-bit halves
            lo, hi = coef & 0xFFFF, coef >> 16
            projection = ((hi @ basis) % P * 65536 + (lo @ basis)) % P
        return _positive(vector % P - projection)

    def _sum_rows(self, rows: np.ndarray) -> np.ndarray:
        """The sum of basis ``rows``, row by row into one accumulator: no copy of the rows (a fancy
        index would copy them first, which cost more than the additions).  At most 2**22 residues
        < 2**31 are added: no int64 overflow before the fold."""
        total = np.zeros(self.atoms, dtype=np.int64)
        for i in rows.tolist():
            np.add(total, self._store[i, :self.atoms], out=total)
        return total

    def _add(self, vector: np.ndarray) -> int | None:
        """Add ``vector`` to the span; its new pivot, or None when it was in the span already."""
        residue = self.reduce(vector)
        nonzero = np.flatnonzero(residue)
        if nonzero.size == 0:
            return None
        q = int(nonzero[0])
        row = residue * _inverse(residue[q]) % P
        if (self.rank + 1) * self.atoms > self.max_entries:
            raise Refusal("AUDIT_FULL", "this site's release history is full: no further result can be "
                                             "audited until the site administrator starts a new release period")
        basis = self.basis
        touched = np.flatnonzero(basis[:, q])
        factors = basis[touched, q].copy()
        if touched.size:
            # only the columns where the new row is non-zero change: when they are few (the
            # residue is often sparse), gather and scatter those instead of rewriting whole rows
            where = np.flatnonzero(row)
            cells = (touched, where) if 3 * where.size < self.atoms else (touched, slice(None))
            block = np.ix_(*cells) if isinstance(cells[1], np.ndarray) else cells[0]
            old = basis[block]
            self._undo.append((cells, old))
            part = row[where] if isinstance(cells[1], np.ndarray) else row
            change = _fold(factors[:, None] * part[None, :])
            basis[block] = _positive(np.subtract(old, change, out=change))
        # the rows' sum: touched row i lost factors[i] * row, and row itself joined
        self.colsum = _positive(self.colsum - _fold(_fold(np.array([factors.sum()]))[0] * row)) + row
        self.colsum = np.where(self.colsum >= P, self.colsum - P, self.colsum)
        self._reserve(self.rank + 1, self.atoms)
        self._store[self.rank, :self.atoms] = row
        self.pivots = np.append(self.pivots, q)
        if self.hidden.shape[0]:  # keep the suppressed cells reduced against the grown basis
            holding = np.flatnonzero(self.hidden[:, q])
            if holding.size:
                self.hidden = self.hidden.copy()  # the rollback keeps the old array
                self.hidden[holding] = _positive(self.hidden[holding]
                                                 - _fold(self.hidden[holding, q:q + 1] * row[None, :]))
        self._check_rows = np.append(touched, self.rank - 1)
        return q

    def _determined_small_atoms(self, rows: np.ndarray) -> list[int]:
        """Atoms of 1..k-1 persons whose unit vector is one of ``rows`` of the reduced basis.  In
        reduced form a row equal to a unit vector e_a has its pivot at a, so only rows whose pivot is
        a small atom are read."""
        pivots = self.pivots[rows]
        rows = rows[(self.sizes[pivots] > 0) & (self.sizes[pivots] < self.min_cell)]
        if rows.size == 0:
            return []
        unit = rows[np.count_nonzero(self.basis[rows], axis=1) == 1]
        return [int(a) for a in self.pivots[unit]]

    # ------------------------------------------------------------------ the audit

    def audit(self, shown: list, hidden: list = ()) -> Verdict:
        """Would releasing sums over each of ``shown`` (with ``hidden`` suppressed alongside)
        disclose something?  Nothing is recorded."""
        return self._run(shown, hidden, keep=lambda verdict: False)

    def commit(self, shown: list, hidden: list = ()) -> Verdict:
        """Record a release that left the node (its verdict is returned, not enforced)."""
        return self._run(shown, hidden, keep=lambda verdict: True)

    def check_and_commit(self, shown: list, hidden: list = ()) -> Verdict:
        """Audit, and record only when safe (call under the caller's lock)."""
        return self._run(shown, hidden, keep=lambda verdict: verdict.safe)

    def _run(self, shown, hidden, keep) -> Verdict:
        saved = (self.persons, self.atom_of.copy(), self.sizes, self.pivots, self.hidden, self.colsum, self.releases)
        self._undo = []
        try:
            verdict = self._apply(shown, hidden)
        except BaseException:
            self._rollback(saved)
            raise
        if not keep(verdict):
            self._rollback(saved)
        self._undo = None
        return verdict

    def _rollback(self, saved) -> None:
        for (rows, columns), values in reversed(self._undo):  # atoms only grow: old columns kept their index
            if isinstance(columns, np.ndarray):
                self._store[np.ix_(rows, columns)] = values
            else:
                self._store[rows, :values.shape[1]] = values
        (self.persons, self.atom_of, self.sizes, self.pivots, self.hidden, self.colsum, self.releases) = saved

    def _apply(self, shown, hidden) -> Verdict:
        shown = [s for s in map(_person_set, shown) if s.size]
        # an empty hidden set goes through the same steps (its zero vector never enters the span):
        # the work of an audit must not tell a refused "nobody" from a refused "a few"
        hidden = [h for h in map(_person_set, hidden) if h.size < self.min_cell]
        where = [self._locate(ids) for ids in shown + hidden]
        if any(w is None for w in where):  # persons were admitted: positions moved
            where = [np.searchsorted(self.persons, ids) for ids in shown + hidden]
        for w in where:  # first every split, then the vectors (a split changes the columns)
            self._split(w)
        shown_at, hidden_at = where[:len(shown)], where[len(shown):]
        # a suppressed cell the earlier releases already determine is no longer this release's to protect
        fresh_hidden = [v for v in map(self._vector, hidden_at) if self.reduce(v).any()]
        small = set()
        for w in shown_at:
            if self._add(self._vector(w)) is not None:
                small.update(self._determined_small_atoms(self._check_rows))
        if fresh_hidden:
            reduced = np.vstack([self.reduce(v) for v in fresh_hidden])
            self.hidden = reduced if self.hidden.shape[0] == 0 else np.vstack([self.hidden, reduced])
        zero = ~self.hidden.any(axis=1) if self.hidden.shape[0] else np.zeros(0, dtype=bool)
        disclosed = np.flatnonzero(zero).tolist()
        if zero.any():  # recorded anyway (commit): drop what can no longer be protected
            self.hidden = self.hidden[~zero]
        self.releases += 1
        return Verdict(sorted(small), disclosed)

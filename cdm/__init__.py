"""radfed's common data model: OMOP CDM v5.4 + radiogenomic extensions, vocabulary, query specs.

Shared by :mod:`node` and :mod:`coordinator`; depends on neither.
"""

__version__ = "0.1.0"

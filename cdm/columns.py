"""Column construction shared by the OMOP tables and radfed's extensions."""

from sqlalchemy import BigInteger, Column
from sqlalchemy.types import TypeEngine

#: Person and event identifiers: 63-bit values derived from (source system, source identifier).
ID = BigInteger


def col(
    name: str,
    type_: type[TypeEngine] | TypeEngine,
    required: bool = False,
    primary_key: bool = False,
    references: tuple[str, str] | None = None,
    doc: str | None = None,
) -> Column:
    """A CDM column.

    ``references`` names the (table, column) this column points to.  It is kept in
    ``Column.info`` instead of an enforced FOREIGN KEY (see :mod:`cdm.omop`).  ``doc`` becomes the
    column comment, so the documentation of the extensions travels with the DDL on PostgreSQL.
    """
    return Column(
        name,
        type_,
        nullable=not (required or primary_key),
        primary_key=primary_key,
        autoincrement=False,
        info={"references": references} if references else {},
        comment=doc,
    )

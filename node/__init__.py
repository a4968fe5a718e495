"""The site side of radfed: ingest, local query execution, disclosure control, audit, bus agent."""

"""The drain benchmark: the pipeline worker against a bare aiokafka/asyncpg loop and a naive Faust agent,
on the same broker and database, one after another. Run it with `make bench` (see bench/__main__.py)."""

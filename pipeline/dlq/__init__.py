"""Dead-letter queue operations: stats, inspect, exactly-once replay with parking, export/import, purge.

One library for the `pipeline dlq` commands and the worker's admin API:

    stats.dlq_stats          every DLQ: pending count, oldest/newest, counts by reason, class, origin
    inspect.inspect          the pending events of one DLQ that match a filter
    replay.replay            re-send matching events exactly once (transactional), parking those past the cap
    transfer.export_dlq      JSON lines (pipeline.dlq.codec), lossless
    transfer.import_dlq      the reverse
    purge.purge              delete a prefix of the DLQ (before a time, or all)

"Pending" events are those at or after the replay group's committed offset (`<app_id>.dlq-replay.<sink>`):
what no replay has handled yet. Errors the caller should show as such derive from `errors.DlqError`.
"""

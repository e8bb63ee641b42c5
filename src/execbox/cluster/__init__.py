"""Cluster mode: many execbox nodes share one Redis for rate limits, execution records,
the node list, session placement and the async queue. Without a Redis URL none of this
is loaded and a node keeps everything in its own SQLite store."""

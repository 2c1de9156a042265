"""Background work as jobs: each claims one unit of work per step and says when to run next.

A job holds the rules of its work (order, retries with backoff, when a row counts as
done) and talks to the wire only through a transport the composition root gives it.
Work waits in the index, so any node may run any job: rows are claimed with locks that
end with the claiming transaction (index.outbox), and a job whose node dies leaves its
work to the others.
"""

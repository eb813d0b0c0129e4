"""The worker every member runs, a container's or a process's: stdlib only, started as
`python -I -S <this directory>` (no site-packages: the quickest interpreter start, and all
a container image needs to hold is the interpreter and the standard modules it imports).

It applies the composite its schema rendered (PREWARM_CONFIG): a cache with the schema's
policy, size and TTL (`cache.py`), a SQLite file with the schema's index hints created
(`store.py`), every declared port listening (`serve.py`); and reports the composite and what
it applied at `GET /config` (`member.py`). Its modules import each other relatively, so the
same files are the package `provisioning.runtime.worker` to prewarm (tests, type checks) and
the top-level package `worker` inside a member (`__main__.py`).
"""

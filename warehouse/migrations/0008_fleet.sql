-- The fleet (issue 14): a host may name its Docker Engine, keep part of its capacity back,
-- and is probed each cycle for what the engine really has and whether it answers.

ALTER TABLE inventory ADD COLUMN reserve_cpu_cores DOUBLE;  -- >= 0, checked when the file is read
ALTER TABLE inventory ADD COLUMN reserve_memory_mb DOUBLE;
ALTER TABLE inventory ADD COLUMN engine VARCHAR;    -- NULL: this machine's engine
ALTER TABLE inventory ADD COLUMN tls_ca VARCHAR;    -- absolute paths, tcp:// engines only
ALTER TABLE inventory ADD COLUMN tls_cert VARCHAR;
ALTER TABLE inventory ADD COLUMN tls_key VARCHAR;

-- The newest probe of each host's engine: one row per host, replaced by every probe.
CREATE TABLE host_status (
    host              VARCHAR PRIMARY KEY,
    healthy           BOOLEAN   NOT NULL,
    engine_cpu_cores  DOUBLE,   -- what the engine reports (NCPU); NULL when it did not answer
    engine_memory_mb  DOUBLE,   -- MemTotal in MiB
    cpu_cores         DOUBLE,   -- what the planner may use: min(file, engine) - reserve
    memory_mb         DOUBLE,
    error             VARCHAR,  -- why it is down
    checked_at        TIMESTAMP NOT NULL
);

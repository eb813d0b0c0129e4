-- The whole profile acts (issue 15): a confidence per resource and window, next to its
-- quantiles (models/profile.py); `confidence` stays the demand metric's.

ALTER TABLE profiles ADD COLUMN requests_confidence DOUBLE;
ALTER TABLE profiles ADD COLUMN concurrency_confidence DOUBLE;
ALTER TABLE profiles ADD COLUMN cpu_cores_confidence DOUBLE;
ALTER TABLE profiles ADD COLUMN memory_mb_confidence DOUBLE;
ALTER TABLE profiles ADD COLUMN net_mbps_confidence DOUBLE;
ALTER TABLE profiles ADD COLUMN io_ops_confidence DOUBLE;

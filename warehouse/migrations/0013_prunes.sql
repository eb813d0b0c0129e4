-- When the cycle last pruned its old prediction runs and history (issue 16). A prune scans
-- every table it prunes (about a second a cycle at 1,000 clients on a week of history) to
-- delete what aged past a retention of days by one cycle; once an hour is enough. One row,
-- written by the prune alone (flows/cycle.py, score).
CREATE TABLE prunes (
    name       VARCHAR   PRIMARY KEY,   -- 'history': prediction runs and the cycle's history
    pruned_at  TIMESTAMP NOT NULL       -- wall clock
);

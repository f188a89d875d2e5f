-- Final job records. `record` is the whole stored record as JSON (what the API shows is built
-- from it); the other columns are copies of its fields that searches filter and sort on.
-- Times are ISO-8601 UTC strings of one fixed format, so text order is time order.
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    mode        TEXT,
    owner       TEXT,
    name        TEXT,
    created_at  TEXT,
    started_at  TEXT,
    finished_at TEXT NOT NULL,
    duration    REAL,
    exit_code   INTEGER,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_mode ON jobs (mode, finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, finished_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (name, finished_at, id);

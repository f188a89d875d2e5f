-- Final pipeline records. `record` is the pipeline's final record as JSON, its stages (names
-- and job ids) in `spec` as a JSON string; the pipeline object is built from it. Its jobs are
-- in `jobs`, each with `pipeline` and `stage` in its record.
CREATE TABLE IF NOT EXISTS pipelines (
    id          TEXT COLLATE "C" PRIMARY KEY,
    status      TEXT NOT NULL,
    owner       TEXT,
    name        TEXT COLLATE "C",
    created_at  TEXT,
    finished_at TEXT COLLATE "C" NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pipelines_by_finished ON pipelines (finished_at, id);

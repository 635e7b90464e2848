-- Dashboard views over video_scans. One text for DuckDB and PostgreSQL: only SQL both
-- accept (CAST, AT TIME ZONE, LEAST/GREATEST, VALUES in a CTE, GROUP BY column names).
-- Days are UTC days whatever the session time zone. Loaded by
-- schemas.warehouse.view_statements(): keep ';' only at the end of a statement.

-- Videos per UTC day and status: how much was scanned and why some have no score.
CREATE OR REPLACE VIEW daily_status_counts AS
SELECT
    CAST(scanned_at AT TIME ZONE 'UTC' AS DATE) AS day,
    status,
    COUNT(*) AS videos
FROM video_scans
GROUP BY CAST(scanned_at AT TIME ZONE 'UTC' AS DATE), status;

-- Share of scored videos labelled FAKE, per UTC day and model version. Only status
-- 'scored' counts: a video with no face has no verdict and must not dilute the rate.
CREATE OR REPLACE VIEW daily_fake_rate AS
SELECT
    CAST(scanned_at AT TIME ZONE 'UTC' AS DATE) AS day,
    model_version,
    COUNT(*) AS scored,
    SUM(CASE WHEN label = 'FAKE' THEN 1 ELSE 0 END) AS fake,
    CAST(SUM(CASE WHEN label = 'FAKE' THEN 1 ELSE 0 END) AS DOUBLE PRECISION)
        / COUNT(*) AS fake_rate
FROM video_scans
WHERE status = 'scored'
GROUP BY CAST(scanned_at AT TIME ZONE 'UTC' AS DATE), model_version;

-- fake_probability in ten buckets of 0.1 (bucket 9 holds 0.9..1.0 inclusive), per
-- model version, every bucket present (0 when empty) so a chart keeps its x axis.
CREATE OR REPLACE VIEW score_histogram AS
WITH buckets (bucket) AS (
    VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)
),
scored AS (
    SELECT
        model_version,
        GREATEST(LEAST(CAST(FLOOR(fake_probability * 10) AS INTEGER), 9), 0) AS bucket
    FROM video_scans
    WHERE fake_probability IS NOT NULL
),
models AS (
    SELECT DISTINCT model_version FROM scored
)
SELECT
    m.model_version,
    b.bucket,
    COUNT(s.bucket) AS videos
FROM models AS m
CROSS JOIN buckets AS b
LEFT JOIN scored AS s
    ON s.model_version = m.model_version AND s.bucket = b.bucket
GROUP BY m.model_version, b.bucket;
